"""What Ray workers get from the driver's environment: settings as env vars, credentials only
through a setup hook (never in Ray's logged runtime env), worker-side path expansion, and a
clear refusal to send cluster workers to a driver-local tracking store."""
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from maskunet_platform.config import ConfigError, load_job
from maskunet_platform.train.engine import configure_worker_env
from maskunet_platform.train.worker_env import worker_runtime_env
from tests.train.conftest import LOCAL_JOB

SECRET = "hf_SuperSecret123"
DRIVER_ENV = {"HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": "aws" + SECRET, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
              "AWS_ENDPOINT_URL": "http://minio:9000", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
              "MLFLOW_TRACKING_PASSWORD": "pw" + SECRET, "UNRELATED": "x"}


def test_credentials_travel_in_a_setup_hook_never_in_env_vars(monkeypatch):
    runtime_env = worker_runtime_env(use_gpu=False, address="10.0.0.1:6379", environ=DRIVER_ENV)
    env_vars = runtime_env["env_vars"]
    assert env_vars == {"DS_ACCELERATOR": "cpu", "AWS_ENDPOINT_URL": "http://minio:9000",
                        "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert SECRET not in json.dumps(env_vars) + repr(runtime_env)
    for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD", "UNRELATED"):
        monkeypatch.delenv(name, raising=False)
    runtime_env["worker_process_setup_hook"]()  # what each worker process runs at start-up
    assert os.environ["HF_TOKEN"] == SECRET and os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw" + SECRET
    assert "UNRELATED" not in os.environ
    # A tracking URI with credentials in it is a secret too.
    with_userinfo = worker_runtime_env(True, None, {"MLFLOW_TRACKING_URI": f"https://u:{SECRET}@mlflow"})
    assert with_userinfo["env_vars"] == {} and "worker_process_setup_hook" in with_userinfo


def test_ray_client_does_not_forward_credentials_and_says_which(caplog):
    with caplog.at_level(logging.WARNING, logger="maskunet_platform.train.worker_env"):
        runtime_env = worker_runtime_env(use_gpu=True, address="ray://head:10001", environ=DRIVER_ENV)
    assert "worker_process_setup_hook" not in runtime_env and SECRET not in repr(runtime_env)
    assert "HF_TOKEN" in caplog.text and SECRET not in caplog.text


def test_torch_extensions_dir_is_expanded_on_the_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "~/ext")  # as shipped: unexpanded
    configure_worker_env(use_gpu=False)
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "ext")
    shipped = worker_runtime_env(False, "head:6379", {"TORCH_EXTENSIONS_DIR": "/Users/me/x"})
    assert "TORCH_EXTENSIONS_DIR" not in shipped["env_vars"]  # never the driver's path


def test_cluster_without_tracking_uri_is_refused_before_connecting(monkeypatch):
    from maskunet_platform.train.launcher import connect_ray

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = load_job(LOCAL_JOB)
    with pytest.raises(ConfigError) as err:
        connect_ray("ray://127.0.0.1:1", job)  # nothing listens there: refused before any connection
    message = str(err.value)
    assert "tracking.tracking_uri" in message and "\n" not in message
    # Fine with a server URI, with tracking off, or without a cluster (nothing to connect to here).
    from maskunet_platform.train.worker_env import check_cluster_tracking

    check_cluster_tracking(load_job(LOCAL_JOB, ["tracking.tracking_uri=http://mlflow:5000"]), "ray://h:1")
    check_cluster_tracking(load_job(LOCAL_JOB, ["tracking.enabled=false"]), "ray://h:1")
    check_cluster_tracking(job, None, environ={})


# A separate Ray (own temp dir) whose driver process has no credentials in its environment:
# only the setup hook can bring HF_TOKEN to the worker.
RAY_PROBE = """
import json, os, sys
import ray
from maskunet_platform.train.worker_env import worker_runtime_env
ray.init(num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1],
         runtime_env=worker_runtime_env(False, None, {"HF_TOKEN": sys.argv[2], "AWS_ENDPOINT_URL": "http://s3:1"}))
seen = ray.get(ray.remote(lambda: [os.environ.get("HF_TOKEN"), os.environ.get("AWS_ENDPOINT_URL")]).remote())
ray.shutdown()
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_a_real_ray_worker_gets_the_credential_and_ray_logs_do_not():
    temp = tempfile.mkdtemp(prefix="rayenv")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
    try:
        out = subprocess.run([sys.executable, "-c", RAY_PROBE, temp, SECRET], env=env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [SECRET, "http://s3:1"]
        logs = [p for p in Path(temp).rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
        agent_log = "".join(p.read_text(errors="ignore") for p in logs if p.name.startswith("runtime_env_agent"))
        assert "http://s3:1" in agent_log  # Ray logs env_vars: a credential there would have shown up
        assert not [p.name for p in logs if SECRET in p.read_text(errors="ignore")], "a credential reached Ray's logs"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
