"""The best trial is the best of those that meet tune.constraints (e.g. background followed)."""
from maskunet_platform.tune.results import COMPLETED, STOPPED, SweepOutcome, TrialRow

BACKGROUND = "subject/masked/background"


def _row(trial_id: str, metric, background, status=COMPLETED, feasible=None) -> TrialRow:
    ok = background is not None and background >= 0.9 if feasible is None else feasible
    return TrialRow(trial_id, {"mask.logit_bias": float(trial_id)}, metric, 0.1, 60, status,
                    constrained={BACKGROUND: background}, feasible=ok)


def test_the_best_trial_meets_the_constraints_and_the_table_says_which_failed():
    sweep = SweepOutcome("s", "subject/diff/subject", "max", [
        _row("1", 0.60, 0.70),  # the highest metric, but the new backgrounds were lost
        _row("2", 0.40, 0.95),
        _row("3", 0.30, 0.99),
        _row("4", None, None, status=STOPPED, feasible=True)])
    assert sweep.best.trial_id == "2"
    table = sweep.table()
    assert BACKGROUND in table[0]
    marks = {row[0]: row[-1] for row in table[1:]}
    assert marks == {"1": "fails a constraint", "2": "best", "3": "", "4": ""}
    assert sweep.to_json()["trials"][0]["feasible"] is False


def test_no_trial_meets_the_constraints_no_best():
    sweep = SweepOutcome("s", "subject/diff/subject", "max", [_row("1", 0.6, 0.7), _row("2", 0.5, 0.8)])
    assert sweep.best is None and sweep.to_json()["best"] is None
