"""The sweep's search space: dotted config paths -> Ray Tune distributions, checked up front.

A bad spec (unknown field, a value the config model rejects at a bound or in a choice) fails
here, naming the field, before Ray starts.
"""
import copy
from typing import Any

from pydantic import ValidationError

from maskunet_platform.config import ConfigError, JobConfig
from maskunet_platform.config.tune import TuneSection


def _set(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _is_leaf(values: dict, dotted: str) -> bool:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return not isinstance(node, dict) or not node


def trial_job(job: JobConfig, sampled: dict[str, Any]) -> JobConfig:
    """`job` with the sampled values at their dotted paths, validated by the same model."""
    raw = job.model_dump(mode="json")
    for dotted, value in sampled.items():
        _set(raw, dotted, value)
    return JobConfig.model_validate(raw)


def check_search_space(job: JobConfig) -> None:
    """Every key a config field, every producible value valid for it (ConfigError otherwise)."""
    space = job.tune.search_space
    if not space:
        raise ConfigError("tune.search_space: empty; give at least one field to sweep, e.g. mask.tau")
    values = job.model_dump(mode="json")
    for dotted, distribution in space.items():
        if dotted.startswith("tune.") or not _is_leaf(values, dotted):
            raise ConfigError(f"tune.search_space.{dotted}: not a field of the job config")
        for value in distribution.extremes():
            try:
                trial_job(job, {dotted: value})
            except ValidationError as e:
                reason = e.errors()[0]["msg"]
                raise ConfigError(f"tune.search_space.{dotted}: {distribution.kind} value {value!r} is invalid: "
                                  f"{reason}") from None


def param_space(section: TuneSection) -> dict[str, Any]:
    """Flat {dotted path: ray.tune domain}."""
    from ray import tune

    makers = {"uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
              "randint": lambda v: tune.randint(*v), "choice": lambda v: tune.choice(copy.deepcopy(v)),
              "grid": lambda v: tune.grid_search(copy.deepcopy(v))}
    return {dotted: makers[d.kind](d.values) for dotted, d in section.search_space.items()}
