"""The embedded default job end to end on real services: local Ray, DeepSpeed ZeRO-2 on 2 CPU
workers, a real MLflow server. One training run; its outputs are checked by several tests."""
import base64
import io
import json

import pytest
import torch
from tests.train.conftest import DEFAULT_STEPS, LOCAL_JOB, SHAPES_PROMPTS
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server.tracking_uri)


def test_masks_train_on_the_pretrained_base_without_damaging_it(default_run):
    _, outcome = default_run
    e = outcome.eval
    assert e["eval/rows"] == 32
    assert outcome.metrics["step"] == DEFAULT_STEPS
    assert 0 < outcome.metrics["train/sparsity_realised"] < 1
    # On a trained base, 30 steps do not buy a measurably better held-out loss (the README's
    # shapes-world figures); they must not damage the base either.
    assert e["eval/masked_loss_overall"] <= 1.05 * e["eval/base_loss_overall"], e


def test_training_reports_the_shapes_benchmark_paired(default_run):
    _, outcome = default_run
    e = outcome.eval
    assert e["shapes/items"] == SHAPES_PROMPTS
    for category in ("background", "colour", "kind", "position", "binding"):
        base, masked, diff = e[f"shapes/base/{category}"], e[f"shapes/masked/{category}"], e[f"shapes/diff/{category}"]
        assert diff == pytest.approx(masked - base)
        assert e[f"shapes/diff/{category}_lo"] <= diff <= e[f"shapes/diff/{category}_hi"]
    assert e["shapes/base/background"] >= 0.7  # the pretrained base really draws the prompts
    assert "shapes benchmark (cpu)" in outcome.timings


def test_evaluation_and_samples_ran_in_the_rank0_worker_not_the_driver(default_run):
    import os

    _, outcome = default_run
    assert outcome.post_training_where.startswith("rank-0 training worker, node ")
    assert f"pid {os.getpid()}" not in outcome.post_training_where
    assert {"eval (cpu)", "samples (cpu)", "post_training"} <= set(outcome.timings)


def test_mlflow_run_params_metrics_artifacts(default_run, client):
    job, outcome = default_run
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.deepspeed.zero_stage"] == "2" and params["train.num_workers"] == "2"
    assert params["train.deepspeed.gradient_clipping"] == "0.0"
    assert params["train.storage_path"].startswith("s3://maskunet-default-run/")
    losses = client.get_metric_history(outcome.mlflow_run_id, "train/loss")
    assert [m.step for m in losses] == list(range(5, DEFAULT_STEPS + 1, 5))
    metrics = run.data.metrics
    # (train/sparsity_expected is logged only with a sparsity penalty; the local job has none)
    for key in ("train/images_per_s", "train/lr", "train/sparsity_realised",
                "train/loss_t0000_0249", "data/rows_in", "eval/base_loss_overall", "eval/masked_loss_overall"):
        assert key in metrics, key
    assert metrics["data/rows_in"] > 0
    names = {a.path for a in client.list_artifacts(outcome.mlflow_run_id)}
    assert {"sparsity_heatmap.png", "samples_base_vs_masked.png", "job.yaml", "mask_generator",
            "shapes_benchmark.png", "shapes_benchmark.json"} <= names
    assert "shapes/diff/colour" in metrics
    for png in ("sparsity_heatmap.png", "samples_base_vs_masked.png", "shapes_benchmark.png"):
        local = client.download_artifacts(outcome.mlflow_run_id, png)
        with Image.open(local) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 60


def test_registered_model_loads_and_generates(default_run, client):
    import mlflow.pyfunc
    import pandas as pd

    job, outcome = default_run
    name = job.tracking.registered_model_name
    version = client.get_model_version(name, outcome.model_version)
    assert version.tags["run_id"] == outcome.mlflow_run_id
    assert version.tags["data_source"] == job.data.source
    assert version.tags["base_model"] == job.model.base
    model = mlflow.pyfunc.load_model(f"models:/{name}/{outcome.model_version}")
    out = model.predict(pd.DataFrame({"prompt": ["a red circle in the center"], "seed": [0]}),
                        params={"num_inference_steps": 3})
    image = Image.open(io.BytesIO(base64.b64decode(out["image_png_b64"][0])))
    assert image.size == (64, 64)


def test_export_round_trips_and_eval_command_reproduces(default_run, mlflow_server, client, tmp_path):
    import ray.train
    from click.testing import CliRunner

    from maskunet import MaskGenerator
    from maskunet_platform.cli import main
    from maskunet_platform.data.uri import s3_filesystem
    from maskunet_platform.train.checkpoint import download_generator

    job, outcome = default_run
    exported = MaskGenerator.from_pretrained(outcome.generator_dir)
    assert outcome.checkpoint_path.startswith("maskunet-default-run/runs/")  # bucket/prefix on S3
    checkpoint = ray.train.Checkpoint(outcome.checkpoint_path, s3_filesystem())
    in_checkpoint = MaskGenerator.from_pretrained(download_generator(checkpoint, tmp_path / "in-checkpoint"))
    for (name, a), (_, b) in zip(exported.state_dict().items(), in_checkpoint.state_dict().items()):
        assert torch.equal(a, b), name
    args = ["eval", "--masks", outcome.generator_dir, "--base", job.model.base, "-c", str(LOCAL_JOB),
            "--set", f"data.source={job.data.source}", "--set", f"tracking.tracking_uri={mlflow_server.tracking_uri}",
            "--set", "tracking.experiment=test-eval", "--json"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    start = result.stdout.rindex("{", 0, result.stdout.index('"metrics"'))
    report, _ = json.JSONDecoder().raw_decode(result.stdout[start:])
    # Same held-out rows, noise and timesteps: the CLI reproduces the training run's eval.
    assert report["metrics"]["eval/masked_loss_overall"] == pytest.approx(outcome.eval["eval/masked_loss_overall"], rel=1e-5)
    assert report["metrics"]["eval/base_loss_overall"] == pytest.approx(outcome.eval["eval/base_loss_overall"], rel=1e-5)
    logged = client.get_run(report["mlflow_run_id"]).data.metrics
    assert logged["eval/masked_loss_overall"] == pytest.approx(report["metrics"]["eval/masked_loss_overall"])
