"""`tune` section: `maskunet sweep` searches any config field with Ray Tune.

Search-space keys are dotted paths into this same config model (`mask.tau`, `train.lr`, ...);
every value a distribution can produce is checked against the model before Ray starts.
"""
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from maskunet_platform.config.base import Section

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")


class Distribution(Section):
    """Exactly one of: uniform [lo, hi], loguniform [lo, hi] (lo > 0), randint [lo, hi),
    choice [values], grid [values] (every value, times num_samples)."""

    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    randint: Optional[tuple[int, int]] = None
    choice: Optional[list[Any]] = None
    grid: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _one_valid_distribution(self):
        given = [name for name in DISTRIBUTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one distribution of {', '.join(DISTRIBUTIONS)} (got {given or 'none'})")
        kind, value = given[0], getattr(self, given[0])
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind}: needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and not value[0] < value[1]:
            raise ValueError(f"{kind}: the lower bound {value[0]} must be below the upper bound {value[1]}")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform: bounds must be > 0, got {value[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in DISTRIBUTIONS if getattr(self, name) is not None)

    @property
    def values(self):
        return getattr(self, self.kind)

    def extremes(self) -> list[Any]:
        """Values that bound what this distribution can produce (checked against the model)."""
        if self.kind == "randint":
            return [self.values[0], self.values[1] - 1]
        return list(self.values)


class SchedulerSection(Section):
    # Periods in optimizer steps (one Tune iteration per training report, train.log_every steps).
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(10, ge=1, description="steps every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class MetricBound(Section):
    """A final metric a trial must satisfy to be the best (e.g. background followed >= 0.9)."""

    min: Optional[float] = None
    max: Optional[float] = None

    @model_validator(mode="after")
    def _a_bound(self):
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def holds(self, value: Optional[float]) -> bool:
        return value is not None and (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class TuneSection(Section):
    # eval/... (the full paired evaluation) or, for a subject job, subject/... (its report:
    # e.g. subject/diff/subject, mode max).
    metric: str = Field("eval/masked_loss_overall", description="final metric trials are ranked by")
    mode: Literal["min", "max"] = "min"
    # Final metrics a trial must also meet to be the best, e.g. {"subject/masked/background": {"min": 0.9}}.
    constraints: dict[str, MetricBound] = Field(default_factory=dict)
    num_samples: int = Field(4, ge=1, description="random samples (times the grid, if any)")
    max_concurrent_trials: int = Field(1, ge=1)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    search_space: dict[str, Distribution] = Field(default_factory=dict)
    # Rows of the fixed held-out batch (fixed noise and timesteps) scored at every report:
    # what ASHA compares across trials, identical for all of them.
    quick_eval_rows: int = Field(8, ge=1)
    register_best: bool = False
    storage_path: str = Field("~/.cache/maskunet/sweeps", description="Tune experiment folders (local or s3://)")
