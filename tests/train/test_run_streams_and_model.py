"""More checks on the session's default run (ZeRO-2, 2 workers, real MLflow server): each
rank draws from its own random streams, steps are counted as applied optimizer steps, and
the registered model records requirements that install on a GPU machine, ships `maskunet`
and loads from code in a fresh process without unpickling anything."""
import os
import subprocess
import sys

import pytest

from tests.train.conftest import DEFAULT_STEPS

pytestmark = pytest.mark.slow


def _by_step(client, run_id: str, key: str) -> dict[int, list[float]]:
    values: dict[int, list[float]] = {}
    for m in client.get_metric_history(run_id, key):
        values.setdefault(m.step, []).append(m.value)
    return values


def test_each_rank_draws_its_own_noise(default_run, mlflow_server):
    from mlflow import MlflowClient

    _, outcome = default_run
    client = MlflowClient(mlflow_server.tracking_uri)
    ranks = [_by_step(client, outcome.mlflow_run_id, f"rng/fingerprint_rank{r}") for r in (0, 1)]
    steps = list(range(5, DEFAULT_STEPS + 1, 5))
    assert sorted(ranks[0]) == sorted(ranks[1]) == steps
    for step in steps:  # the state of every stream (worker generator, torch CPU/CUDA) differs by rank
        assert ranks[0][step] != ranks[1][step], step
    # ... and moves on every step: no window replays another's stream.
    assert len({v[0] for v in ranks[0].values()}) == len(steps)
    skipped = client.get_metric_history(outcome.mlflow_run_id, "train/skipped_steps")
    assert [m.value for m in skipped] == [0.0] * len(steps)  # fp32: every step applied, and counted


def test_registered_model_installs_on_a_gpu_machine_and_loads_without_pickle(default_run, mlflow_server, tmp_path):
    from pathlib import Path

    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    job, outcome = default_run
    client = MlflowClient(mlflow_server.tracking_uri)
    version = client.get_model_version(job.tracking.registered_model_name, outcome.model_version)
    local = Path(download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path),
                                    tracking_uri=mlflow_server.tracking_uri))
    requirements = (local / "requirements.txt").read_text().split()
    torch_pin = next(r for r in requirements if r.startswith("torch=="))
    assert "+" not in " ".join(requirements), requirements  # no local build labels such as +cpu
    assert torch_pin == "torch==2.13.0" and any(r.startswith("diffusers==") for r in requirements)
    assert (local / "code" / "maskunet" / "generator.py").is_file()  # the method's code travels with the model
    # Logged from code: no pickled object anywhere (no .pkl file, no file starting with a pickle header).
    files = [p for p in local.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".pkl", ".pickle", ".pt", ".bin", ".ckpt"}]
    assert not [p for p in files if p.read_bytes()[:1] == b"\x80"], "a pickle in the model's files"
    weights = {p.name for p in files if p.suffix == ".safetensors"}
    assert {"diffusion_pytorch_model.safetensors", "model.safetensors"} <= weights
    # A fresh process where the platform package cannot be imported loads it by alias and generates.
    name = job.tracking.registered_model_name
    client.set_registered_model_alias(name, "pickle-free", outcome.model_version)
    probe = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PLATFORM, f"models:/{name}@pickle-free"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri})
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split()[-2:] == ["MaskUNetModel", "64x64"]


LOAD_WITHOUT_PLATFORM = """
import base64, io, sys
sys.modules["maskunet_platform"] = None  # any import of the platform package fails
import cloudpickle, pickle
def refuse(*args, **kwargs):
    raise AssertionError("the model was unpickled")
pickle.load = pickle.loads = cloudpickle.load = cloudpickle.loads = refuse
import mlflow.pyfunc, pandas as pd
from PIL import Image
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"prompt": ["a red circle in the center"], "seed": [0]}),
                    params={"num_inference_steps": 2})
image = Image.open(io.BytesIO(base64.b64decode(out["image_png_b64"][0])))
print(type(model.unwrap_python_model()).__name__, f"{image.width}x{image.height}")
"""
