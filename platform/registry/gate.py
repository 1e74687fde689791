"""The promotion gate: is the challenger at least as good as the alias holder, metric by metric,
on the same evaluation? Pure decisions; gathering the numbers is `comparison.py`'s job.

The first gate metric is the primary one: the challenger must beat the holder on it by at
least `min_improvement`. The others are guards: the challenger must not be worse on them
beyond their noise (1.96 standard errors of the difference, where a standard error is known,
as for the shapes score; else not worse at all)."""
import math
from dataclasses import dataclass
from typing import Optional

from maskunet_platform.registry.evidence import SHAPES_SCORE, STANDARD_ERROR

HELDOUT_LOSS = "eval/masked_loss_overall"
DIRECTIONS = ("min", "max")


class GateSpecError(ValueError):
    """A --metric the gate cannot use (invalid input)."""


@dataclass(frozen=True)
class GateMetric:
    name: str
    mode: str  # "min": lower is better; "max": higher is better
    kind: str  # the evidence it comes from: "heldout" (eval/...) or "shapes" (shapes/...)
    required: bool = True  # False: used only when both versions can be scored on it

    def __str__(self) -> str:
        return f"{self.name} ({'lower' if self.mode == 'min' else 'higher'} is better)"


# The default gate: the paired held-out loss, and the shapes benchmark when there is one.
DEFAULT_GATE = (GateMetric(HELDOUT_LOSS, "min", "heldout"), GateMetric(SHAPES_SCORE, "max", "shapes", required=False))


def parse_metric(text: str) -> GateMetric:
    """`eval/...` or `shapes/...`, optionally `:min` / `:max` (default: losses and KID min, else max)."""
    name, _, mode = text.strip().partition(":")
    kind = {"eval": "heldout", "shapes": "shapes"}.get(name.split("/", 1)[0])
    if kind is None or "/" not in name:
        raise GateSpecError(f"--metric {text!r}: gate metrics are eval/... (paired held-out loss) or "
                            f"shapes/... (shapes benchmark), e.g. {HELDOUT_LOSS} or {SHAPES_SCORE}")
    mode = mode or ("min" if "loss" in name or name.endswith("/kid") else "max")
    if mode not in DIRECTIONS:
        raise GateSpecError(f"--metric {text!r}: the direction must be :min or :max")
    return GateMetric(name, mode, kind)


@dataclass
class MetricCheck:
    metric: GateMetric
    challenger: float
    holder: Optional[float]
    min_improvement: float  # required gain (the primary metric; 0 for guards)
    tolerance: float = 0.0  # allowed loss within the noise (guards)

    @property
    def improvement(self) -> Optional[float]:
        """How much better the challenger is, in the metric's units (negative: worse)."""
        if self.holder is None:
            return None
        diff = self.challenger - self.holder
        return -diff if self.metric.mode == "min" else diff

    @property
    def passed(self) -> bool:
        return self.improvement is None or self.improvement >= self.min_improvement - self.tolerance

    def to_json(self) -> dict:
        return {"metric": self.metric.name, "mode": self.metric.mode, "challenger": self.challenger,
                "holder": self.holder, "improvement": self.improvement, "required": self.min_improvement,
                "tolerance": self.tolerance, "passed": self.passed}


def check(metrics: list[GateMetric], challenger: dict[str, float], holder: Optional[dict[str, float]],
          min_improvement: float) -> list[MetricCheck]:
    """One check per metric; `holder` None: no holder yet (every check passes)."""
    checks = []
    for index, metric in enumerate(metrics):
        if metric.name not in challenger or (holder is not None and metric.name not in holder):
            raise GateSpecError(f"--metric {metric.name}: not among the evaluation's metrics "
                                f"(have: {', '.join(sorted(challenger))})")
        primary = index == 0
        checks.append(MetricCheck(metric, challenger[metric.name], holder and holder[metric.name],
                                  min_improvement if primary else 0.0, 0.0 if primary else _noise(metric, challenger, holder)))
    return checks


def _noise(metric: GateMetric, challenger: dict[str, float], holder: Optional[dict[str, float]]) -> float:
    key = metric.name + STANDARD_ERROR
    if holder is None or key not in challenger or key not in holder:
        return 0.0
    return 1.96 * math.sqrt(challenger[key] ** 2 + holder[key] ** 2)
