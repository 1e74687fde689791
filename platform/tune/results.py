"""A finished (or stopped) sweep as data: one row per trial, the best trial, the JSON."""
from dataclasses import dataclass, field
from typing import Any, Optional

from maskunet_platform.tune.trial import FINAL_FLAG

COMPLETED, STOPPED, ERRORED = "completed", "stopped_early", "errored"


@dataclass
class TrialRow:
    trial_id: str
    config: dict[str, Any]
    metric: Optional[float]  # the final (full evaluation) metric; None unless completed
    quick: Optional[float]  # the last quick held-out score
    steps: int
    status: str
    sparsity: Optional[float] = None
    run_id: Optional[str] = None
    seconds: float = 0.0  # the trial's wall time (Tune's time_total_s)
    constrained: dict[str, Optional[float]] = field(default_factory=dict)  # tune.constraints' metrics
    feasible: bool = True  # meets every tune.constraints bound

    def to_json(self) -> dict:
        return {"trial_id": self.trial_id, "run_id": self.run_id, "config": self.config, "metric": self.metric,
                "steps": self.steps, "status": self.status, "seconds": self.seconds,
                "constrained": self.constrained, "feasible": self.feasible}


@dataclass
class SweepOutcome:
    sweep: str
    metric: str
    mode: str
    trials: list[TrialRow] = field(default_factory=list)
    tracking_uri: Optional[str] = None
    parent_run_id: Optional[str] = None
    wall_s: float = 0.0

    @property
    def best(self) -> Optional[TrialRow]:
        done = [t for t in self.trials if t.status == COMPLETED and t.metric is not None and t.feasible]
        if not done:
            return None
        pick = min if self.mode == "min" else max
        return pick(done, key=lambda t: t.metric)

    def to_json(self) -> dict:
        best = self.best
        return {"sweep": self.sweep, "tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id,
                "metric": self.metric, "mode": self.mode,
                "best": best and {"trial_id": best.trial_id, "run_id": best.run_id, "config": best.config,
                                  "metric": best.metric},
                "trials": [t.to_json() for t in self.trials], "wall_s": self.wall_s}

    def table(self) -> list[list[str]]:
        """Header + one row per trial (best marked)."""
        keys = sorted({k for t in self.trials for k in t.config})
        constrained = sorted({k for t in self.trials for k in t.constrained})
        best = self.best
        rows = [["trial", *keys, self.metric, *constrained, "quick", "sparsity", "steps", "status", ""]]
        for t in self.trials:
            mark = "best" if t is best else "" if t.feasible or t.status != COMPLETED else "fails a constraint"
            rows.append([t.trial_id, *(_fmt(t.config.get(k)) for k in keys), _fmt(t.metric),
                         *(_fmt(t.constrained.get(k)) for k in constrained), _fmt(t.quick), _fmt(t.sparsity),
                         str(t.steps), t.status, mark])
        return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def summarize(grid, job, sweep: str, parent) -> SweepOutcome:
    """Rows from Tune's ResultGrid (status from how each trial ended)."""
    outcome = SweepOutcome(sweep, job.tune.metric, job.tune.mode,
                           tracking_uri=parent and parent.tracking_uri, parent_run_id=parent and parent.run_id)
    for result in grid:
        metrics = result.metrics or {}
        status = ERRORED if result.error is not None else (COMPLETED if metrics.get(FINAL_FLAG) else STOPPED)
        trial_id = metrics.get("trial_id") or result.path.rsplit("_", 2)[-2]
        constrained = {k: metrics.get(k) for k in job.tune.constraints} if status == COMPLETED else {}
        outcome.trials.append(TrialRow(
            str(trial_id), dict(result.config or {}), metrics.get(job.tune.metric) if status == COMPLETED else None,
            metrics.get("eval/quick_masked_loss"), int(metrics.get("step", 0)), status,
            metrics.get("train/sparsity_realised"), seconds=float(metrics.get("time_total_s", 0.0)),
            constrained=constrained,
            feasible=all(bound.holds(constrained.get(k)) for k, bound in job.tune.constraints.items())))
    outcome.trials.sort(key=lambda t: t.trial_id)
    return outcome
