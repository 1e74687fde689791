"""Preprocessing through a real local Ray: bad rows, colour modes, filters, determinism."""
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from maskunet_platform.config.data import DataSection
from maskunet_platform.data.pipeline import build_dataset, preprocess_spec
from maskunet_platform.data.preprocess import preprocess_blocks
from maskunet_platform.data.stats import drop_metrics, log_drop_counts, read_drop_counts, release_counter
from tests.data.badrows import bad_row_cases

RED, BLUE, WHITE = np.array([255, 0, 0]), np.array([0, 0, 255]), np.full(3, 255)


def _rows_by_key(ds) -> dict:
    return {r["key"]: r for r in ds.take_all()}


def test_bad_rows_are_dropped_by_reason_and_the_rest_become_rgb(ray_local, tiny_base, bad_rows_file, caplog):
    cases = bad_row_cases()
    name = "test-bad-rows"
    cfg = DataSection(source=bad_rows_file, resolution=64, deterministic=True)
    rows = _rows_by_key(build_dataset(cfg, tiny_base, counter_name=name, passthrough=("key",)))
    assert set(rows) == {k for k, (_, _, reason) in cases.items() if reason is None}
    counts = read_drop_counts(name)
    expected = {}
    for _, _, reason in cases.values():
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    assert counts == {"rows_in": len(cases), "rows_out": len(rows), "dropped": expected}
    assert drop_metrics(name)["data/dropped_undecodable"] == 2
    with caplog.at_level(logging.INFO, logger="maskunet.data"):
        log_drop_counts(name)
    assert "empty_caption" in caplog.text and f"{len(rows)} out" in caplog.text
    release_counter(name)
    for key, row in rows.items():
        px = row["pixel_values"]
        assert px.shape == (3, 64, 64) and px.dtype == np.uint8, key  # scaled to [-1, 1] on the trainer
        assert row["input_ids"].shape == (77,) and row["input_ids"].dtype == np.int64
    centre = {k: r["pixel_values"][:, 32, 32].astype(int) for k, r in rows.items()}
    np.testing.assert_array_equal(centre["one_pixel"], RED)
    np.testing.assert_array_equal(centre["rgba"], WHITE)  # transparent -> white, not blue
    np.testing.assert_array_equal(centre["palette_transparent"], WHITE)
    np.testing.assert_array_equal(centre["la"], 0 * WHITE)  # opaque black stays black
    np.testing.assert_array_equal(centre["grayscale"], np.full(3, 100))
    np.testing.assert_array_equal(centre["png16"], np.full(3, 128))  # not clipped white
    assert centre["cmyk_jpeg"][0] > 230 and centre["cmyk_jpeg"][1:].max() < 50  # CMYK red stays red
    wide = rows["wide_20_1"]["pixel_values"].astype(int)  # centred crop: red left of centre, blue right
    np.testing.assert_array_equal(wide[:, 10, 5], RED)
    np.testing.assert_array_equal(wide[:, 10, 58], BLUE)


def test_filters_are_off_by_default_and_drop_by_reason_when_on(ray_local, tiny_base, sample_dir, bad_rows_file):
    cfg = DataSection(source=bad_rows_file, min_side=16)
    rows = _rows_by_key(build_dataset(cfg, tiny_base, counter_name="t-minside", passthrough=("key",)))
    assert "one_pixel" not in rows and "wide_20_1" in rows  # shorter side 1 < 16; 20 >= 16
    assert read_drop_counts("t-minside")["dropped"]["too_small"] == 1
    cfg = DataSection(source=sample_dir, min_aesthetic=6.0)
    n = build_dataset(cfg, tiny_base, counter_name="t-aes").count()
    counts = read_drop_counts("t-aes")
    assert 0 < n < 24 and counts["dropped"]["low_aesthetic"] == 24 - n
    for name in ("t-minside", "t-aes"):
        release_counter(name)


def test_random_crop_and_flip_are_seeded_and_deterministic(ray_local, tiny_base, bad_rows_file):
    def wide(seed, deterministic=True):
        cfg = DataSection(source=bad_rows_file, crop="random", flip=True, seed=seed, deterministic=deterministic)
        rows = _rows_by_key(build_dataset(cfg, tiny_base, counter_name="t-aug", passthrough=("key",)))
        return np.stack([rows[k]["pixel_values"] for k in sorted(rows)])

    a, b = wide(0), wide(0)
    np.testing.assert_array_equal(a, b)  # same seed, deterministic: identical batches
    assert not np.array_equal(a, wide(1))  # the seed changes crops/flips
    release_counter("t-aug")


def test_read_is_fused_with_preprocessing(ray_local, tiny_base, sample_dir):
    # Unfused, raw image bytes would round-trip through the object store and the read
    # and preprocess tasks would compete for the same CPUs (Ray splits a read's output,
    # which blocks fusion, when it plans more blocks than there are read tasks).
    ds = build_dataset(DataSection(source=sample_dir), tiny_base, counter_name="t-fused")
    assert sum(len(b["input_ids"]) for b in ds.iter_batches(batch_size=8)) == 24
    assert "ReadParquetFragments->MapBatches(preprocess_blocks)" in ds.stats()
    release_counter("t-fused")

def test_batches_left_empty_by_drops_yield_no_block(tiny_base, sample_dir):
    # Ray would store an empty batch as a block of pickled objects, not tensor columns.
    table = pq.read_table(sorted(Path(sample_dir).glob("*.parquet"))[0])
    spec = preprocess_spec(DataSection(source=sample_dir, min_aesthetic=6.0, preprocess_batch_size=1), tiny_base)
    outs = list(preprocess_blocks(table, spec))
    kept = sum(s >= 6.0 for s in table.column("aesthetic").to_pylist())
    assert 0 < len(outs) == kept < table.num_rows  # one-row batches of dropped rows yield nothing
    assert all(len(o["input_ids"]) == len(o["pixel_values"]) == 1 for o in outs)
    assert all(o["pixel_values"].dtype == np.uint8 for o in outs)


def test_local_batches_are_ray_datas_deterministic_batches(ray_local, tiny_base, sample_data, bad_rows_file):
    """Evaluation reads its few held-out rows in-process (`iter_local_batches`): the same rows,
    pixels and tokens, in the same batches, as the Ray Data pipeline's deterministic order,
    bad rows dropped the same way, and a short last batch when the split runs out."""
    import torch

    from maskunet_platform.data.pipeline import iter_local_batches

    for source, split, rows in ((sample_data(96, 3, 5), "holdout", 20), (sample_data(96, 3, 5), "train", 13),
                                (bad_rows_file, "all", 100)):
        cfg = DataSection(source=source, resolution=32, deterministic=True, holdout_fraction=0.3)
        expected = list(build_dataset(cfg, tiny_base, split=split, counter_name="t-local").limit(rows)
                        .iter_torch_batches(batch_size=8))
        got = list(iter_local_batches(cfg, tiny_base, split=split, rows=rows, batch_size=8))
        assert [len(b["input_ids"]) for b in got] == [len(b["input_ids"]) for b in expected], (source, split)
        assert sum(len(b["input_ids"]) for b in got) == min(rows, sum(len(b["input_ids"]) for b in expected))
        for a, b in zip(got, expected):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (source, split)
