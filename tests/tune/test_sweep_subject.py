"""`maskunet sweep -c jobs/sweep-subject.yaml`: a recipe search for subject-driven masks, ranked by
the subject report and constrained by "background followed" (2 tiny trials, embedded store)."""
import json

import pytest

from tests.fixtures.cli import maskunet_env, run_maskunet
from tests.train.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.long]
PROMPTS = 4


def test_a_subject_sweep_ranks_trials_by_the_report_under_the_background_constraint(shapes_base, tmp_path):
    sets = [f"model.base={shapes_base}", f"data.source={tmp_path / 'subject'}",
            f"train.storage_path={tmp_path / 'runs'}", f"train.export_dir={tmp_path / 'exports'}",
            f"tracking.local_store={tmp_path / 'mlflow'}", f"tune.storage_path={tmp_path / 'sweeps'}",
            "train.steps=2", "train.log_every=1", "train.checkpoint_every=2", "data.batch_size=4",
            "data.subject.instance_rows=8", "data.subject.num_class_images=4", "data.subject.class_steps=2",
            f"data.subject.report.prompts={PROMPTS}", "data.subject.report.steps=2", "train.eval.rows=8",
            "tune.quick_eval_rows=4", "tune.search_space={mask.text_conditioning: {grid: [false, true]}}",
            "tracking.log_samples=false"]
    result = run_maskunet(["sweep", "-c", str(REPO / "jobs" / "sweep-subject.yaml"), "--name", "subject", "--json",
                           *(arg for s in sets for arg in ("--set", s))], maskunet_env(), timeout=1500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["metric"] == "subject/diff/subject" and report["mode"] == "max"
    trials = report["trials"]
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials)
    assert {t["config"]["mask.text_conditioning"] for t in trials} == {False, True}
    for t in trials:
        assert -1 <= t["metric"] <= 1
        background = t["constrained"]["subject/masked/background"]
        assert 0 <= background <= 1 and t["feasible"] == (background >= 0.9)
    feasible = [t for t in trials if t["feasible"]]
    if feasible:
        assert report["best"]["metric"] == max(t["metric"] for t in feasible)
    else:
        assert report["best"] is None
    assert len(list((tmp_path / "runs" / "subject-data").iterdir())) == 1  # prepared once for both trials
