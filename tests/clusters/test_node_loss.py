"""A training run survives losing the node that hosts its worker: on a local 3-node Ray
cluster, the node is removed after the first checkpoint; Ray Train (FailureConfig max_failures)
starts a new worker on the other node from that checkpoint and the run finishes with a
continuous step count in MLflow."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.clusters.references import REPO
from tests.fixtures.cli import maskunet_env

pytestmark = [pytest.mark.slow, pytest.mark.long]
STEPS, EVERY = 12, 2


def test_run_survives_losing_the_workers_node(tiny_base, sample_data, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    temp_dir = tempfile.mkdtemp(prefix="mu-nl-", dir="/tmp")  # Ray socket paths must stay short
    overrides = [f"model.base={tiny_base}", f"data.source={sample_data(rows=320, shards=4, seed=0)}",
                 f"train.storage_path={tmp_path / 'runs'}", f"train.export_dir={tmp_path / 'exports'}",
                 "name=node-loss", "train.num_workers=1", "train.cpus_per_worker=1", "train.deepspeed.enabled=false",
                 f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}", "train.log_every=1",
                 "train.max_failures=2", "train.eval.rows=8", "train.eval.shapes.prompts=0",
                 f"tracking.tracking_uri={mlflow_server.tracking_uri}", "tracking.experiment=node-loss",
                 "tracking.register_model=false", "tracking.log_samples=false", "tracking.log_heatmap=false"]
    settings = {"temp_dir": temp_dir, "overrides": overrides}
    proc = subprocess.Popen([sys.executable, "-m", "tests.clusters.node_loss_scenario", json.dumps(settings)],
                            cwd=REPO, env=maskunet_env(RAY_TMPDIR=temp_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, output[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])
    removed, metrics = result["removed"], result["metrics"]
    assert "error" not in removed and removed.get("node_id"), result
    assert metrics["step"] == STEPS, result
    # Restarted from a checkpoint taken before the loss, not from scratch.
    resumed = int(metrics["resumed_from_step"])
    assert resumed > 0 and resumed % EVERY == 0 and f"checkpoint_step{resumed:08d}" in removed["after"], result
    client = MlflowClient(mlflow_server.tracking_uri)
    steps = [m.step for m in client.get_metric_history(result["run_id"], "train/loss")]
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), steps  # continuous: no gap, no restart at 1
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
