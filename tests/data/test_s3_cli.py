"""Real moto S3 + local Ray: sample -> stream -> preprocess -> encode, and the CLI."""
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

from maskunet_platform.commands.data import data
from maskunet_platform.config.data import DataSection
from maskunet_platform.data.encode import encode_resources, trainer_gpu_share
from maskunet_platform.data.model_inputs import pixels_to_model
from maskunet_platform.data.pipeline import build_dataset
from maskunet_platform.data.stats import read_drop_counts, release_counter
from maskunet_platform.data.uri import resolve_source
from maskunet_platform.train.base import FrozenBase, batch_inputs


def test_s3_sample_stream_preprocess_and_split(s3, ray_local, tiny_base):
    from transformers import CLIPTokenizer

    s3.create_bucket("laion")
    result = CliRunner().invoke(data, ["sample", "--out", "s3://laion/art", "--rows", "30", "--shards", "3",
                                       "--seed", "1"])
    assert result.exit_code == 0, result.output
    src = resolve_source("s3://laion/art")
    assert len(src.filesystem.get_file_info(pafs.FileSelector("laion/art"))) == 3

    cfg = DataSection(source="s3://laion/art", resolution=64, deterministic=True, holdout_fraction=0.3)
    rows = build_dataset(cfg, tiny_base, counter_name="t-s3", passthrough=("text",)).take_all()
    assert len(rows) == 30 and read_drop_counts("t-s3") == {"rows_in": 30, "rows_out": 30, "dropped": {}}
    release_counter("t-s3")
    tok = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    expected_ids = tok([r["text"] for r in rows], padding="max_length", max_length=77).input_ids
    np.testing.assert_array_equal(np.stack([r["input_ids"] for r in rows]), np.array(expected_ids))
    px = np.stack([r["pixel_values"] for r in rows])
    assert px.shape == (30, 3, 64, 64) and px.dtype == np.uint8  # a quarter of float32's bytes
    assert px.min() < 10 and px.max() > 245  # really spans the range (saturated sample colours)

    # Held-out split per read unit: disjoint, complete, and the held-out read touches only its rows.
    def texts(split):
        name = f"t-s3-{split}"
        got = [r["text"] for r in build_dataset(cfg, tiny_base, split=split, counter_name=name,
                                                passthrough=("text",)).take_all()]
        assert read_drop_counts(name)["rows_in"] == len(got)  # rows of the other split never reached preprocessing
        release_counter(name)
        return got

    train, holdout = texts("train"), texts("holdout")
    assert train and holdout and not set(train) & set(holdout) and len(holdout) <= 10  # 1 of 3 10-row units
    assert sorted(train + holdout) == sorted(r["text"] for r in rows)
    assert texts("holdout") == holdout  # stable


def test_cli_inspect_and_encode(s3, ray_local, tiny_base, sample_dir, id_dir, bad_rows_file, monkeypatch):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    monkeypatch.setenv("MASKUNET_BASE", tiny_base)
    runner = CliRunner()
    # --json: exactly one JSON object on stdout.
    res = runner.invoke(data, ["inspect", bad_rows_file, "--json"])
    assert res.exit_code == 0, res.output + str(res.exception)
    assert json.loads(res.stdout) == {"rows_in": 17, "rows_out": 9, "dropped": {
        "empty_caption": 3, "null_image": 2, "undecodable": 2, "zero_size": 1}}
    res = runner.invoke(data, ["inspect", sample_dir])  # no other flags
    assert res.exit_code == 0 and "rows in:  24" in res.stdout and "dropped:  none" in res.stdout
    res = runner.invoke(data, ["inspect", sample_dir + "/nothing-here"])
    assert res.exit_code != 0 and "does not exist" in res.output

    s3.create_bucket("latents")
    res = runner.invoke(data, ["encode", "--in", id_dir, "--out", "s3://latents/run1", "--resolution", "16"])
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "wrote 192 encoded rows" in res.stdout
    # Encoded shards are a source in their own right: the trainer skips encoding.
    ds = build_dataset(DataSection(source="s3://latents/run1"), tiny_base)
    batch = next(iter(ds.iter_torch_batches(batch_size=192)))
    assert set(batch) == {"latents", "latents_std", "encoder_hidden_states"} and batch["latents"].dtype == torch.float32
    assert batch["latents"].shape == (192, 4, 2, 2) and batch["encoder_hidden_states"].shape == (192, 77, 32)
    assert batch["latents_std"].shape == batch["latents"].shape and (batch["latents_std"] > 0).all()
    # `latents` / `latents_std` are the VAE posterior's mean / std times the scaling factor.
    raw = next(iter(build_dataset(DataSection(source=id_dir, resolution=16), tiny_base).iter_torch_batches(
        batch_size=192)))
    vae = AutoencoderKL.from_pretrained(tiny_base, subfolder="vae")
    scale = vae.config.scaling_factor
    with torch.no_grad():
        posterior = vae.encode(pixels_to_model(raw["pixel_values"], torch.float32)).latent_dist
    dist = torch.cdist(batch["latents"].flatten(1), posterior.mean.flatten(1) * scale)
    assert dist.min(dim=1).values.max() < 1e-3
    match = dist.argmin(dim=1)  # raw row of each encoded row
    torch.testing.assert_close(batch["latents_std"], posterior.std[match] * scale, atol=1e-4, rtol=1e-4)
    # One posterior convention: training draws mean + std * eps from the encoded shards exactly as
    # the raw path's latent_dist.sample() does, for the same generator state.
    base = FrozenBase(None, vae, None, None, None, tiny_base)
    sampled, _ = batch_inputs(base, batch, "cpu", torch.float32, torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = vae.encode(pixels_to_model(raw["pixel_values"][match], torch.float32)).latent_dist.sample(
            generator=torch.Generator().manual_seed(7)) * scale
    torch.testing.assert_close(sampled, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(sampled, batch["latents"], atol=1e-3)  # a sample, not the mean
    # The raw path takes the uint8 pixels as they arrive and scales them on the worker.
    text_encoder = CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder")
    raw_base = FrozenBase(None, vae, text_encoder, None, None, tiny_base)
    latents, states = batch_inputs(raw_base, raw, "cpu", torch.float32, torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = vae.encode(pixels_to_model(raw["pixel_values"], torch.float32)).latent_dist.sample(
            generator=torch.Generator().manual_seed(3)) * scale
    torch.testing.assert_close(latents, want)
    assert states.shape == (192, 77, 32)
    # The held-out split of an encoded source, per read unit too: disjoint, complete, non-empty blocks.
    def split_rows(split):
        cfg = DataSection(source="s3://latents/run1", holdout_fraction=0.1, preprocess_batch_size=2)
        blocks = list(build_dataset(cfg, tiny_base, split=split).iter_batches(batch_size=None))
        assert all(len(b["latents"]) for b in blocks)
        return {b.tobytes() for blk in blocks for b in blk["latents"]}

    train, holdout = split_rows("train"), split_rows("holdout")
    assert train and holdout and not train & holdout and len(train | holdout) == 192 and len(holdout) < 96


def test_shards_without_latents_std_train_on_the_mean_with_a_warning(ray_local, tiny_base, tmp_path, caplog):
    latents = np.random.default_rng(0).standard_normal((4, 4, 2, 2)).astype(np.float32)
    table = pa.table({"latents": list(latents.reshape(4, -1)), "encoder_hidden_states": [[0.0] * 8] * 4})
    pq.write_table(table, tmp_path / "old.parquet")
    with caplog.at_level(logging.WARNING, logger="maskunet.data"):
        ds = build_dataset(DataSection(source=str(tmp_path)), tiny_base)
    assert "no latents_std column" in caplog.text and "posterior mean" in caplog.text
    batch = {k: torch.from_numpy(np.stack(list(v))) for k, v in ds.take_batch(4, batch_format="numpy").items()}
    assert "latents_std" not in batch
    mean, _ = batch_inputs(FrozenBase(None, None, None, None, None, ""), batch, "cpu", torch.float32,
                           torch.Generator().manual_seed(0))
    torch.testing.assert_close(mean, batch["latents"])


def test_encode_actors_take_a_gpu_share_that_leaves_room_for_the_trainers(ray_local):
    gpu = DataSection(encode=True, encode_device="cuda")
    assert trainer_gpu_share(gpu) == 0.75 and encode_resources(True, gpu.encode_gpu_fraction) == {
        "num_gpus": 0.25, "num_cpus": 0}
    assert trainer_gpu_share(gpu.model_copy(update={"encode_gpu_fraction": 0.5})) == 0.5
    assert trainer_gpu_share(DataSection(encode=False, encode_device="cuda")) == 1.0
    assert trainer_gpu_share(DataSection(encode=True, encode_device="cpu")) == 1.0
    assert trainer_gpu_share(DataSection(encode=True)) == 1.0  # auto on this GPU-less Ray: CPU actors
    assert encode_resources(False, 0.25) == {"num_gpus": 0, "num_cpus": 1}
    with pytest.raises(ValidationError, match="encode_gpu_fraction"):
        DataSection(encode_gpu_fraction=1.0)
