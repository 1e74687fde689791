"""Real moto S3 + local Ray: sample -> stream -> preprocess -> encode, and the CLI."""
import json

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from click.testing import CliRunner

from maskunet_platform.commands.data import data
from maskunet_platform.config.data import DataSection
from maskunet_platform.data.pipeline import build_dataset, preprocess_spec
from maskunet_platform.data.preprocess import preprocess_batch
from maskunet_platform.data.stats import read_drop_counts, release_counter
from maskunet_platform.data.uri import resolve_source


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
    assert px.shape == (30, 3, 64, 64) and px.dtype == np.float32 and px.min() >= -1 and px.max() <= 1
    assert px.min() < -0.9 and px.max() > 0.9  # really spans the range (saturated sample colours)

    # Held-out split by content hash: disjoint, covers every row, independent of batching.
    table = pq.read_table("laion/art", filesystem=src.filesystem)
    def texts(split, chunk):
        spec = preprocess_spec(cfg, tiny_base, split=split, passthrough=("text",))
        return [t for i in range(0, 30, chunk) for t in preprocess_batch(table.slice(i, chunk), spec)["text"]]
    train, holdout = texts("train", 7), texts("holdout", 30)
    assert train and holdout and not set(train) & set(holdout)
    assert sorted(train + holdout) == sorted(r["text"] for r in rows)
    assert texts("holdout", 4) == holdout


def test_cli_inspect_and_encode(s3, ray_local, tiny_base, sample_dir, bad_rows_file, monkeypatch):
    from diffusers import AutoencoderKL

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
    res = runner.invoke(data, ["encode", "--in", sample_dir, "--out", "s3://latents/run1"])
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "wrote 24 encoded rows" in res.stdout
    # Encoded shards are a source in their own right: the trainer skips encoding.
    ds = build_dataset(DataSection(source="s3://latents/run1"), tiny_base)
    batch = next(iter(ds.iter_torch_batches(batch_size=24)))
    assert set(batch) == {"latents", "encoder_hidden_states"} and batch["latents"].dtype == torch.float32
    assert batch["latents"].shape == (24, 4, 8, 8) and batch["encoder_hidden_states"].shape == (24, 77, 32)
    # Latents are the VAE posterior mean times its scaling factor (matched up to row order).
    raw = next(iter(build_dataset(DataSection(source=sample_dir), tiny_base).iter_torch_batches(batch_size=24)))
    vae = AutoencoderKL.from_pretrained(tiny_base, subfolder="vae")
    with torch.no_grad():
        want = vae.encode(raw["pixel_values"]).latent_dist.mean * vae.config.scaling_factor
    dist = torch.cdist(batch["latents"].flatten(1), want.flatten(1))
    assert dist.min(dim=1).values.max() < 1e-3
    # The held-out split of an encoded source: disjoint, complete, only non-empty blocks.
    def split_rows(split):
        cfg = DataSection(source="s3://latents/run1", holdout_fraction=0.3, preprocess_batch_size=2)
        blocks = list(build_dataset(cfg, tiny_base, split=split).iter_batches(batch_size=None))
        assert all(len(b["latents"]) for b in blocks)
        return {b.tobytes() for blk in blocks for b in blk["latents"]}

    train, holdout = split_rows("train"), split_rows("holdout")
    assert train and holdout and not train & holdout and len(train | holdout) == 24
