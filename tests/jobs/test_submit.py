"""`maskunet submit` against a real Ray head with token auth: a tiny training job runs to the
end on the cluster (logs, MLflow run, registered version), settings are forwarded by name and
credentials never leave the submitting shell; `maskunet jobs list|status|logs|stop`."""
import json
import shutil
from pathlib import Path

import pytest

from tests.fixtures.cli import assert_plain_console, maskunet_env, run_maskunet, summary_value
from tests.fixtures.ray_head import wait_for

pytestmark = pytest.mark.slow
SECRET = "SubmitSecret-4711"


@pytest.fixture(scope="module")
def job_args(tiny_base, sample_data, tmp_path_factory):
    """jobs/local.yaml as a 2-step, 1-worker DDP run on the tiny base, in a private folder: what
    is under test is the submission, not the training (that is tests/train's)."""
    root = tmp_path_factory.mktemp("submit")
    sets = [f"model.base={tiny_base}", f"data.source={sample_data(rows=320, shards=4, seed=0)}",
            f"train.storage_path={root / 'runs'}", f"train.export_dir={root / 'exports'}", "name=submitted",
            "tracking.experiment=submitted", "tracking.registered_model_name=submitted", "train.steps=2", "train.num_workers=1",
            "train.log_every=1", "train.checkpoint_every=2", "train.cpus_per_worker=0.5", "train.eval.rows=4",
            "train.deepspeed.enabled=false", "tracking.log_samples=false", "train.eval.shapes.prompts=0"]
    return [arg for item in sets for arg in ("--set", item)]


@pytest.fixture(scope="module")
def submitted(ray_head, job_args, mlflow_server):
    env = maskunet_env(RAY_JOB_ADDRESS=ray_head.address, RAY_AUTH_TOKEN=ray_head.token,
                       MLFLOW_TRACKING_URI=mlflow_server.tracking_uri, AWS_SECRET_ACCESS_KEY=SECRET)
    env.pop("RAY_AUTH_MODE")
    result = run_maskunet(["submit", "jobs/local.yaml", *job_args, "--wait"], env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    return result


def test_bad_input_fails_before_any_cluster_contact(job_args):
    env = maskunet_env(RAY_JOB_ADDRESS="http://127.0.0.1:9")  # nothing listens there: contact would be exit 1
    bad = run_maskunet(["submit", "jobs/local.yaml", *job_args, "--set", "train.stepz=3"], env, timeout=120)
    assert bad.returncode == 2 and "train.stepz" in bad.stderr, bad.stderr


@pytest.mark.parametrize("case, named", [
    ("outside", "outside"), ("runtime_env_key", "pipp"), ("runtime_env_secret", "AWS_SECRET_ACCESS_KEY"),
    ("sqlite_on_cluster", "tracking.tracking_uri"), ("sweep_without_space", "tune.search_space"),
    ("eval_without_masks", "--weights"), ("ray_client_address", "8265"),
])
def test_what_submit_refuses_locally(case, named, tmp_path):
    """The checks `maskunet submit` makes before contacting anything (each one exit 2 in the CLI)."""
    from maskunet_platform.config import ConfigError
    from maskunet_platform.jobs.client import AddressError
    from maskunet_platform.jobs.submit import Request, plan

    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    request = Request("jobs/local.yaml", address="http://127.0.0.1:9", environ=environ)
    runtime_env = tmp_path / "env.yaml"
    if case == "outside":
        (tmp_path / "job.yaml").write_text("name: x\n")
        request.spec_file = str(tmp_path / "job.yaml")
    elif case.startswith("runtime_env"):
        runtime_env.write_text("image_uri: x\npipp: [torch]\n" if case == "runtime_env_key"
                               else "image_uri: x\nenv_vars: {AWS_SECRET_ACCESS_KEY: k}\n")
        request.runtime_env_file = str(runtime_env)
    elif case == "sqlite_on_cluster":
        request.environ = {}
    elif case == "sweep_without_space":
        request.kind = "sweep"
    elif case == "eval_without_masks":
        request.kind = "eval"
    else:
        request.address = "ray://head:10001"
    with pytest.raises((ConfigError, AddressError), match=named.replace(".", r"\.").replace("-", r"\-")):
        plan(request)


def test_the_planned_job_runs_this_repository():
    from maskunet_platform.jobs.runtime_env import REPO
    from maskunet_platform.jobs.submit import Request, plan

    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_ENDPOINT_URL": "http://s3:9000",
               "AWS_SECRET_ACCESS_KEY": SECRET, "RAY_AUTH_TOKEN": SECRET}
    planned = plan(Request("jobs/sweep-sd15.yaml", overrides=("train.steps=10",), environ=environ))
    try:
        assert planned.spec.kind == "sweep"
        assert planned.spec.entrypoint == ("python -m maskunet_platform.cli sweep -c jobs/sweep-sd15.yaml "
                                           "--set train.steps=10")
        env = planned.runtime_env
        assert env["working_dir"] == str(REPO) and {".venv/", ".git/", "mlruns/", "__pycache__/"} <= set(env["excludes"])
        (package,) = env["py_modules"]
        assert package.endswith("/maskunet_platform") and (Path(package) / "jobs" / "submit.py").is_file()
        assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://s3:9000" and SECRET not in json.dumps(env)
        assert planned.secrets_held == ["AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"]
    finally:
        shutil.rmtree(planned.staging)


def test_submitted_training_job_succeeds_and_is_tracked(submitted, mlflow_server):
    from mlflow import MlflowClient

    assert_plain_console(submitted)
    out = submitted.stdout
    job_id = out.split("maskunet submit: job ")[1].split()[0]
    assert f"maskunet submit: job {job_id} succeeded" in out
    assert "| maskunet train: run submitted-" in out  # the job's own summary, streamed while it ran
    assert summary_value(out, "forwarded env").split(", ").count("MLFLOW_TRACKING_URI") == 1
    held = out.split("not forwarded (the cluster must provide them): ", 1)[1].splitlines()[0]
    assert "AWS_SECRET_ACCESS_KEY" in held.split(", ")  # named, never its value (other tests may set more)
    assert SECRET not in out + submitted.stderr
    client = MlflowClient(mlflow_server.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("submitted").experiment_id])
    assert run.info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == 2
    (version,) = client.search_model_versions("name='submitted'")
    assert version.run_id == run.info.run_id


def test_logs_status_and_list(submitted, client_env):
    job_id = submitted.stdout.split("maskunet submit: job ")[1].split()[0]
    logs = run_maskunet(["jobs", "logs", job_id], client_env, timeout=60)
    assert logs.returncode == 0 and "registered model:" in logs.stdout and "submitted v1" in logs.stdout
    status = run_maskunet(["jobs", "status", job_id, "--json"], client_env, timeout=60)
    record = json.loads(status.stdout)
    assert record["status"] == "SUCCEEDED" and record["entrypoint"].startswith("python -m maskunet_platform.cli train")
    assert record["metadata"]["maskunet.kind"] == "train"
    listed = json.loads(run_maskunet(["jobs", "list", "--json"], client_env, timeout=60).stdout)
    assert job_id in [j["id"] for j in listed["jobs"]]
    info = _job_info(client_env, job_id)
    assert SECRET not in json.dumps(info, default=str)  # not in the runtime env Ray keeps and shows
    assert info["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    missing = run_maskunet(["jobs", "status", "no-such-job"], client_env, timeout=60)
    assert missing.returncode == 1 and "no-such-job" in missing.stderr


def test_without_the_token_the_server_refuses(ray_head):
    env = maskunet_env(RAY_JOB_ADDRESS=ray_head.address)  # RAY_AUTH_MODE=disabled: no token sent
    refused = run_maskunet(["jobs", "list"], env, timeout=60)
    assert refused.returncode == 1 and "Authentication required" in refused.stderr, refused.stderr


def test_jobs_stop_stops_a_running_job(ray_head, job_args, client_env, mlflow_server):
    env = dict(client_env, MLFLOW_TRACKING_URI=mlflow_server.tracking_uri)
    started = run_maskunet(["submit", "jobs/local.yaml", *job_args, "--set", "train.steps=100000",
                            "--set", "name=stopped", "--json"], env, timeout=120)
    assert started.returncode == 0, started.stderr
    job_id = json.loads(started.stdout)["id"]
    wait_for(lambda: _status(client_env, job_id) == "RUNNING", 120, f"{job_id} running")
    stopped = run_maskunet(["jobs", "stop", job_id], client_env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert f"maskunet jobs: {job_id} STOPPED" in stopped.stdout
    assert _status(client_env, job_id) == "STOPPED"


def _status(env, job_id) -> str:
    return json.loads(run_maskunet(["jobs", "status", job_id, "--json"], env, timeout=60).stdout)["status"]


def _job_info(env, job_id) -> dict:
    from dataclasses import asdict

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(env["RAY_JOB_ADDRESS"], headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    info = client.get_job_info(job_id)
    return info.dict() if hasattr(info, "dict") else asdict(info)


def test_auth_header_comes_from_the_environment_only(tmp_path):
    from maskunet_platform.jobs.client import AddressError, auth_headers, job_server_address

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert auth_headers({"RAY_AUTH_TOKEN": "abc"}) == {"Authorization": "Bearer abc"}
    assert auth_headers({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == {"Authorization": "Bearer from-file"}
    assert auth_headers({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "abc"}) == {}  # a cluster without auth
    assert auth_headers({}) == {}  # Ray's SDK then applies its own rules (~/.ray/auth_token in token mode)
    with pytest.raises(AddressError, match="RAY_AUTH_TOKEN_PATH"):
        auth_headers({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    assert job_server_address("head:8265") == "http://head:8265"
