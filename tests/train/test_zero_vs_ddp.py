"""DeepSpeed ZeRO-2 and plain DDP on 2 gloo workers give the same losses with clipping off."""
import pytest

from tests.train.conftest import DEFAULT_STEPS, PARITY, SECRET

pytestmark = pytest.mark.slow


def _loss_history(client, run_id: str) -> list[float]:
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == list(range(5, DEFAULT_STEPS + 1, 5))
    return [m.value for m in history]


def test_zero2_matches_ddp(default_run, mlflow_server, make_job, shapes_base):
    from mlflow import MlflowClient

    from maskunet_platform.train.launcher import train_job

    _, zero2 = default_run  # ZeRO-2 (the default job) with clipping off
    # A credential in a URL must never reach MLflow params (the data is local: it is unused).
    ddp = train_job(make_job("parity-ddp", *PARITY, f"model.base={shapes_base}", "train.deepspeed.enabled=false",
                             f"data.s3_endpoint_url=http://key:{SECRET}@127.0.0.1:9",
                             tracking_uri=mlflow_server.tracking_uri), finalize=False)
    client = MlflowClient(mlflow_server.tracking_uri)
    params = client.get_run(ddp.mlflow_run_id).data.params
    assert not any(SECRET in value for value in params.values()), "a credential leaked into params"
    assert "***@127.0.0.1:9" in params["data.s3_endpoint_url"]
    zero2_losses = _loss_history(client, zero2.mlflow_run_id)
    ddp_losses = _loss_history(client, ddp.mlflow_run_id)
    # Same weights, rows and noise: windows after the first match only if ZeRO-2's partitioned
    # AdamW update equals DDP's allreduce-mean + full AdamW, step after step.
    assert zero2_losses == pytest.approx(ddp_losses, rel=1e-4, abs=1e-6)
    assert len(set(round(v, 6) for v in zero2_losses)) > 1  # training moved: not one constant
