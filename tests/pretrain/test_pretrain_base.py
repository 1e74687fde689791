"""`maskunet pretrain-base`: a real (short) pretraining run on local Ray, tracked in a real
MLflow server, writes a folder that loads like any SD folder; the run is seeded."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskunet_platform.cli import main

pytestmark = pytest.mark.slow


def test_pretrain_base_writes_a_loadable_seeded_base_and_tracks_the_run(ray_local, mlflow_server, tmp_path):
    from diffusers import StableDiffusionPipeline
    from mlflow import MlflowClient

    out = tmp_path / "base"
    # The gpu recipe's sizes where no flag is given (VAE crops per step), the flags elsewhere.
    args = ["pretrain-base", "--out", str(out), "--recipe", "gpu", "--steps", "6", "--vae-steps", "4", "--resolution", "32",
            "--batch-size", "8", "--lr", "1e-3", "--tracking-uri", mlflow_server.tracking_uri, "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["out"] == str(out) and report["bytes"] > 0 and report["recipe"] == "gpu"
    weights = sorted(p.name for p in out.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pkl", ".ckpt"))
    assert weights and all(name.endswith(".safetensors") for name in weights), weights  # never pickle
    pipe = StableDiffusionPipeline.from_pretrained(out)  # the loading path of SD1.5 folders
    assert pipe.vae.config.sample_size == 32 and pipe.unet.config.sample_size == 8
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on this VAE's latents
    assert len(pipe.unet.up_blocks) >= 2 and sum(hasattr(b, "attentions") for b in pipe.unet.up_blocks) >= 2

    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["unet_steps"] == "6"
    assert run.data.params["unet_batch_size"] == "8" and float(run.data.params["unet_lr"]) == 1e-3
    assert run.data.params["vae_batch_size"] == "64"
    vae_curve = client.get_metric_history(run.info.run_id, "vae/loss")
    unet_curve = client.get_metric_history(run.info.run_id, "unet/loss")
    assert [m.step for m in vae_curve] == [4] and [m.step for m in unet_curve] == [4 + 6]  # one x-axis
    assert "base/model_index.json" in {a.path for a in client.list_artifacts(run.info.run_id, "base")}


def test_pretraining_is_seeded():
    from maskunet_platform.pretrain.runner import PretrainSettings, pretrain_files

    settings = PretrainSettings(resolution=32, vae_steps=2, unet_steps=2, vae_batch_size=4, unet_batch_size=4)
    unet = "unet/diffusion_pytorch_model.safetensors"
    first, again = pretrain_files(settings, None, None), pretrain_files(settings, None, None)
    other = pretrain_files(PretrainSettings(**{**vars(settings), "seed": 1}), None, None)
    assert first[unet] == again[unet] and first["vae/diffusion_pytorch_model.safetensors"] == again[
        "vae/diffusion_pytorch_model.safetensors"]
    assert first[unet] != other[unet]


def test_worker_processes_draw_the_same_stream_as_the_thread():
    """The GPU path makes rows in worker processes: the batches must not depend on it."""
    import torch

    from maskunet_platform.pretrain.world import ShapesStream

    streams = [ShapesStream(7, 6, 32, workers=workers) for workers in (0, 2)]
    try:
        for _ in range(4):
            (pixels, captions), (again, captions_again) = (next(s) for s in streams)
            assert torch.equal(pixels, again) and captions == captions_again
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.parametrize("extra, message", [
    (["--resolution", "36"], "--resolution 36: must be a multiple of 8"),
    (["--steps", "0"], "--steps"),
    (["--lr", "0"], "--lr"),
    (["--batch-size", "-2"], "--batch-size"),
    (["--recipe", "tpu"], "--recipe"),
])
def test_pretrain_base_rejects_bad_input_in_one_line(tmp_path, extra, message):
    result = CliRunner().invoke(main, ["pretrain-base", "--out", str(tmp_path / "o"), "--no-tracking", *extra])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    result = CliRunner().invoke(main, ["pretrain-base", "--out", str(tmp_path / "full"), "--no-tracking"])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "user data"
