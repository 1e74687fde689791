"""The default tier's sweep: `maskunet sweep` in its own process (local Ray with its dashboard,
Ray Tune + ASHA, every trial a 1-worker Ray Train run) against the session's MLflow
server, at the smallest size where ASHA has a decision to make: 2 trials, the second far
worse at the first rung. The 4-trial sweep with an interruption and `--resume` is in
test_sweep_run.py (`make test-long`)."""
import json
import os
import subprocess

import pytest

from tests.tune.test_sweep_run import sweep_command

pytestmark = pytest.mark.slow
SWEEP = "test-sweep-asha"
# A threshold of 0.9 drops most weights at the start (logit(0.9) = 2.2 is above the +2 bias);
# it runs after 0.3 (one trial at a time), so at its first rung it meets a much better score.
# Trials on plain DDP with one worker each (2-worker DeepSpeed trials: test_sweep_run.py), 2 steps,
# the rung after step 1.
SETTINGS = ["train.steps=2", "train.num_workers=1", "train.log_every=1", "train.checkpoint_every=2", "train.eval.rows=4",
            "train.deepspeed.enabled=false", "data.deterministic=true", "tune.scheduler.grace_period=1",
            "tune.quick_eval_rows=4",
            "tune.num_samples=1", "tune.search_space={mask.threshold: {grid: [0.3, 0.9]}}"]


@pytest.fixture(scope="module")
def report(mlflow_server, shapes_base, sample_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep-asha")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    command = sweep_command(tmp, mlflow_server.tracking_uri, sample_data(160, 4, 3), "--set",
                            f"model.base={shapes_base}", name=SWEEP, settings=SETTINGS)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_asha_stops_the_worse_trial_at_its_first_rung(report):
    assert report["sweep"] == SWEEP and report["metric"] == "eval/masked_loss_overall"
    by_threshold = {t["config"]["mask.threshold"]: t for t in report["trials"]}
    assert set(by_threshold) == {0.3, 0.9}
    assert by_threshold[0.3]["status"] == "completed" and by_threshold[0.3]["steps"] == 2
    assert by_threshold[0.9]["status"] == "stopped_early" and by_threshold[0.9]["steps"] < 2, report["trials"]
    assert report["best"]["trial_id"] == by_threshold[0.3]["trial_id"]


def test_trials_are_child_runs_of_the_sweep(report, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.tracking_uri)
    parent = client.get_run(report["parent_run_id"])
    assert parent.data.tags["maskunet.kind"] == "sweep" and parent.info.status == "FINISHED"
    assert {"sweep.yaml", "search_space.json", "sweep_summary.csv", "best_config.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    for trial in report["trials"]:
        child = client.get_run(trial["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["maskunet.trial_status"] == trial["status"]
    assert parent.data.metrics["best/eval/masked_loss_overall"] == pytest.approx(report["best"]["metric"])
