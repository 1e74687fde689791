"""`maskunet train` as a real process with stdout piped (CI, `ray job logs`), on the embedded
store: plain progress lines, a closing summary naming the run, the log file, `maskunet ui`;
then the re-run cases: the same finished config is reported without starting Ray, a changed
config is a new run, --resume / --new are honoured or refused with exit code 2."""
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from maskunet_platform.config import load_job
from tests.fixtures.cli import assert_plain_console, maskunet_env, run_maskunet, summary_value
from tests.fixtures.services import free_port
from tests.train.conftest import LOCAL_JOB

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli_job(tiny_base, train_data, tmp_path_factory):
    """Arguments of a 4-step embedded-default run in a private folder, and that folder. It trains
on objective both: the denoising loss plus the reward of images it samples (2 DDIM steps)."""
    root = tmp_path_factory.mktemp("cli-train")
    overrides = [f"model.base={tiny_base}", f"data.source={train_data}", f"train.storage_path={root / 'runs'}",
                 f"train.export_dir={root / 'exports'}", f"tracking.local_store={root / 'mlflow'}",
                 "tracking.experiment=cli", "tracking.registered_model_name=cli", "train.steps=4",
                 "train.log_every=2", "train.checkpoint_every=4", "train.cpus_per_worker=0.5", "train.eval.rows=8",
                 "tracking.log_samples=false", "train.eval.shapes.prompts=4", "train.eval.shapes.steps=2",
                 "train.objective=both", "train.reward.steps=2", "train.reward.batch_size=1"]
    return [arg for item in overrides for arg in ("--set", item)], overrides, root


@pytest.fixture(scope="module")
def first_run(cli_job):
    args, _, root = cli_job
    result = run_maskunet(["train", *args], maskunet_env(), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result


def test_train_prints_plain_progress_and_a_summary(first_run, cli_job):
    _, _, root = cli_job
    assert_plain_console(first_run)
    out = first_run.stdout
    steps = [line.split("step ")[1].split()[0] for line in out.splitlines() if "training: step" in line]
    assert steps == ["2/4", "4/4"]
    assert "loss " in out and "reward " in out and "img/s" in out and "sparsity " in out
    assert "shapes bench:" in out and "masked - base (paired)" in out  # the benchmark's table
    for stage in ("start Ray + MLflow run done", "start workers done", "evaluate + shapes benchmark done",
                  "MLflow log + register done"):
        assert stage in out, stage
    # The closing summary's time per stage splits the remote work into its parts; rank 0
    # evaluates after training, so no evaluation task is started.
    timed = summary_value(out, "time")
    for part in ("start Ray", "start MLflow run (meanwhile)", "start workers", "worker set-up", "training",
                 "evaluate", "shapes benchmark", "MLflow log + register"):
        assert f"{part} " in timed, (part, timed)
    assert "start eval task" not in timed
    run_name = summary_value(out, "what happened").split()[2]
    assert out.count("\n") <= 60 and f"maskunet train: run {run_name} trained (new run)" in out
    run_id = summary_value(out, "mlflow run").split()[0]
    assert len(run_id) == 32 and summary_value(out, "registered model") == "cli v1"
    assert summary_value(out, "checkpoint").endswith("checkpoint_step00000004")
    assert summary_value(out, "next").startswith(f"maskunet ui --store {root / 'mlflow'}")
    log = Path(summary_value(out, "log"))
    assert log.parent == root / "exports" / run_name / "logs"
    noise = log.read_text()
    assert "RayTrainWorker" in noise and "Started a local Ray instance" in noise  # the noise is kept, there
    assert "shm_comm_op" not in noise  # DeepSpeed's inference-only CPU op is neither built nor loaded


def test_finished_run_is_reported_without_starting_ray(first_run, cli_job):
    args, _, root = cli_job
    first_id = summary_value(first_run.stdout, "mlflow run").split()[0]
    env = maskunet_env()
    again = run_maskunet(["train", *args, "--json"], env, timeout=300)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["action"] == "finished" and report["mlflow_run_id"] == first_id
    assert report["metrics"]["step"] == 4 and report["registered_model"] == {"name": "cli", "version": "1"}
    assert "not trained again" in report["why"]
    assert not Path(env["RAY_TMPDIR"]).exists()  # Ray never started, let alone Ray Train

    text = run_maskunet(["train", *args], env, timeout=300)
    assert text.returncode == 0 and "already finished: not trained again" in text.stdout
    assert "--resume" in summary_value(text.stdout, "what happened")


def test_changed_config_is_a_new_run_and_resume_new_are_checked(first_run, cli_job):
    from maskunet_platform.train.runs import RunSelectionError, plan_run

    args, overrides, root = cli_job
    same = load_job(LOCAL_JOB, overrides)
    finished = plan_run(same)
    assert finished.action == "finished"
    changed = plan_run(load_job(LOCAL_JOB, [*overrides, "train.lr=0.03"]))
    assert changed.action == "new" and changed.run_name != finished.run_name
    assert f"differs from job maskunet-local's earlier run {finished.run_name}" in changed.why
    assert plan_run(same, new=True).run_name == f"{finished.run_name}-2"
    longer = load_job(LOCAL_JOB, [*overrides, "train.steps=6"])
    assert plan_run(longer, resume=finished.run_name).action == "extend"
    with pytest.raises(RunSelectionError, match="finished at step 4"):
        plan_run(same, resume=finished.run_name)
    refused = run_maskunet(["train", *args, "--resume", "no-such-run"], maskunet_env(), timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error: --resume no-such-run: no run")


def test_ui_serves_the_run_and_stops_its_process_group(first_run, cli_job):
    _, _, root = cli_job
    run_id = summary_value(first_run.stdout, "mlflow run").split()[0]
    port = free_port()
    env = maskunet_env()
    proc = subprocess.Popen([sys.executable, "-m", "maskunet_platform.cli", "ui", "--port", str(port), "--store",
                             str(root / "mlflow")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        url_line = next(line for line in proc.stdout if line.startswith("MLflow UI:"))
        assert f"http://127.0.0.1:{port}" in url_line
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the mlflow server and its workers
        body = json.dumps({"experiment_ids": ["1"]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search", body,
                                         {"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(request, timeout=30).read())["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        logged = {m["key"] for m in runs[0]["data"]["metrics"]}
        assert {"train/loss", "train/reward"} <= logged  # objective both logs both
        artifact = f"http://127.0.0.1:{port}/get-artifact?path=job.yaml&run_uuid={run_id}"
        assert b"maskunet-local" in urllib.request.urlopen(artifact, timeout=30).read()
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
