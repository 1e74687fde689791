"""Shared inputs for the training tests: tiny base, sample data, and a job builder."""
import os
from pathlib import Path

import pytest

from maskunet_platform.config import load_job
from tests.fixtures.services import free_port

REPO = Path(__file__).resolve().parents[2]
LOCAL_JOB = REPO / "jobs" / "local.yaml"
DEFAULT_STEPS = 10  # two log windows (log_every 5): enough to compare ZeRO-2 with DDP step by step
SHAPES_PROMPTS = 8
SECRET = "SuperSecret123"
# Clipping off and a fixed row order, so the ZeRO-2 default run doubles as the DDP parity reference.
PARITY = ["train.deepspeed.gradient_clipping=0", "data.deterministic=true", f"train.steps={DEFAULT_STEPS}"]

# Any DeepSpeed op a test's config loads JIT-builds once; keep the builds across test sessions.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/maskunet/torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def train_data(sample_data) -> str:
    return sample_data(rows=320, shards=4, seed=0)


@pytest.fixture(scope="session")
def make_job(tiny_base, train_data, tmp_path_factory):
    """jobs/local.yaml with test locations; 0.5 CPU per worker leaves Ray Data a CPU on 2 cores."""
    root = tmp_path_factory.mktemp("train-runs")

    def build(name: str, *overrides: str, tracking_uri: str | None = None):
        base = [f"name={name}", f"model.base={tiny_base}", f"data.source={train_data}",
                f"train.storage_path={root / 'storage'}", f"train.export_dir={root / 'exports'}",
                "train.cpus_per_worker=0.5", f"tracking.experiment=test-{name}", "train.eval.shapes.prompts=0",
                f"tracking.registered_model_name=test-{name}"]
        base.append(f"tracking.tracking_uri={tracking_uri}" if tracking_uri else "tracking.enabled=false")
        return load_job(LOCAL_JOB, [*base, *overrides])

    return build


@pytest.fixture(autouse=True)
def _no_stale_experiment_env():
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID, which would leak between tests.
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture(scope="session")
def default_run(s3, ray_local, mlflow_server, make_job, shapes_base):
    """The default job (ZeRO-2, 2 workers) on the pretrained shapes base, with tracking, eval,
    the shapes benchmark, artifacts and registration, its checkpoints on S3 (moto, endpoint
    from AWS_ENDPOINT_URL). The session's one trained run for tests that need *a* trained run."""
    from maskunet_platform.train.launcher import train_job

    bucket = s3.create_bucket("maskunet-default-run")
    job = make_job("default", *PARITY, f"model.base={shapes_base}", f"train.eval.shapes.prompts={SHAPES_PROMPTS}",
                   f"train.storage_path=s3://{bucket}/runs", tracking_uri=mlflow_server.tracking_uri)
    outcome = train_job(job, job_yaml=LOCAL_JOB.read_text())
    return job, outcome


DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(scope="session")
def gloo_group():
    """A real torch.distributed gloo group of one process, as Ray Train would have set up; one
    per session: DeepSpeed keeps the first group it was initialised with."""
    import torch.distributed as dist

    saved = {k: os.environ.get(k) for k in DIST_ENV}
    port = free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
    try:
        yield
    finally:
        dist.destroy_process_group()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
