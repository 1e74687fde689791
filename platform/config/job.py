"""The job config model, YAML loading and `--set a.b=c` overrides."""
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import Field, ValidationError

from maskunet_platform.config.base import Section
from maskunet_platform.config.compare import CompareSection
from maskunet_platform.config.model import MaskSection, ModelSection
from maskunet_platform.config.data import DataSection
from maskunet_platform.config.serve import ServeSection
from maskunet_platform.config.tracking import TrackingSection
from maskunet_platform.config.train import TrainSection
from maskunet_platform.config.tune import TuneSection


class ConfigError(ValueError):
    """A job config that cannot be used; the message names the offending field."""


class JobConfig(Section):
    name: str = "maskunet"
    model: ModelSection = Field(default_factory=ModelSection)
    mask: MaskSection = Field(default_factory=MaskSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    # Only `maskunet sweep` reads it; excluded from dumps, so it never changes what a trial's
    # run is (fingerprints, params) or what workers receive.
    tune: TuneSection = Field(default_factory=TuneSection, exclude=True)
    serve: ServeSection = Field(default_factory=ServeSection)
    # Only `maskunet compare` reads it; excluded from dumps like `tune`.
    compare: CompareSection = Field(default_factory=CompareSection, exclude=True)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid job config {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {field}: {e['msg']}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    # YAML scalars: 3 -> int, 1e-5 -> float, true -> bool, [a, b] -> list.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """Apply `a.b=c` overrides to a raw config dict (before validation)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, value = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = _parse_value(value)
    return raw


def load_job(path: str | Path | None = None, overrides: Iterable[str] = ()) -> JobConfig:
    """Load and validate a job YAML (or the defaults when `path` is None)."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"job config {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"job config {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"job config {path} must be a mapping of sections")
    raw = apply_overrides(raw, overrides)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
