"""Per-epoch read order through Ray Train's own data path, and resuming without replay."""
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import DataConfig

from maskunet_platform.config.data import DataSection
from maskunet_platform.data.parquet_source import plan_fragments, split_fragments
from maskunet_platform.data.pipeline import build_dataset, execution_options, local_shuffle_buffer
from maskunet_platform.data.stats import release_counter
from maskunet_platform.data.units import epoch_order
from tests.data.conftest import ID_ROW_GROUP, ID_ROWS

SEED = 5


def _cfg(id_dir: str, **kw) -> DataSection:
    return DataSection(source=id_dir, resolution=16, deterministic=True, seed=SEED, preprocess_batch_size=8, **kw)


def _expected(id_dir: str, epoch: int) -> list[int]:
    """Row ids of `epoch` in the planned unit order (2 CPUs -> at least 4 tasks: 6 row groups stay whole)."""
    files = sorted(str(p) for p in Path(id_dir).glob("*.parquet"))
    row_groups = plan_fragments(files, pafs.LocalFileSystem(), ["id"])
    frags = split_fragments(epoch_order(row_groups, SEED, epoch), 4, 8)
    assert len(frags) == 6 and all(f.num_rows == ID_ROW_GROUP for f in frags)
    return [files.index(f.path) * ID_ROWS + f.row_group * ID_ROW_GROUP + r for f in frags
            for r in range(f.start, f.start + f.num_rows)]


def _ids(batches) -> list[int]:
    return [int(i) for b in batches for i in b["id"]]


def test_every_training_epoch_reads_the_units_in_a_new_seeded_order(ray_local, tiny_base, id_dir):
    # What Ray Train does with `datasets=`: DataConfig.configure -> streaming_split, whose
    # SplitCoordinator actor re-executes the dataset (and so re-plans the read) every epoch.
    cfg = _cfg(id_dir)
    ds = build_dataset(cfg, tiny_base, split="train", counter_name="t-order", passthrough=("id",))
    [shard] = [s["train"] for s in DataConfig(execution_options=execution_options(cfg)).configure(
        {"train": ds}, world_size=1, worker_handles=None, worker_node_ids=None)]
    epochs = [_ids(shard.iter_batches(batch_size=16, batch_format="numpy")) for _ in range(3)]
    assert [len(e) for e in epochs] == [3 * ID_ROWS] * 3
    assert epochs == [_expected(id_dir, e) for e in range(3)]
    assert len({tuple(e) for e in epochs}) == 3  # three different orders of the same rows
    assert local_shuffle_buffer(cfg) is None  # deterministic: no local shuffle on the workers
    assert local_shuffle_buffer(DataSection(shuffle_buffer=64)) == 64
    assert local_shuffle_buffer(DataSection(shuffle_buffer=0)) is None
    release_counter("t-order")


def test_resume_does_not_replay_consumed_units_and_reads_all_the_rest(ray_local, tiny_base, id_dir):
    cfg = _cfg(id_dir)

    def first_epoch(resume_rows: int) -> list[int]:
        ds = build_dataset(cfg, tiny_base, split="train", counter_name="t-resume", passthrough=("id",),
                           resume_rows=resume_rows)
        return _ids(ds.iter_batches(batch_size=16, batch_format="numpy"))

    epoch0, epoch1 = _expected(id_dir, 0), _expected(id_dir, 1)
    assert first_epoch(0) == epoch0
    resumed = first_epoch(70)  # 70 rows consumed: 2 whole 32-row units and 6 rows of the third
    assert resumed == epoch0[64:]  # the 2 consumed units are not read again, all the others are
    assert not set(resumed) & set(epoch0[:64]) and set(resumed) | set(epoch0[:64]) == set(epoch0)
    assert first_epoch(3 * ID_ROWS + 32) == epoch1[32:]  # past a whole epoch: epoch 1's order
    release_counter("t-resume")


def test_local_shuffle_buffer_mixes_rows_across_read_units(ray_local, tiny_base, id_dir):
    # What `train.loop.batches` passes to iter_torch_batches. In a fixed row order every
    # 16-row batch holds rows of one 32-row unit; the buffer mixes units within batches.
    cfg = _cfg(id_dir)
    ds = build_dataset(cfg, tiny_base, counter_name="t-buffer", passthrough=("id",))

    def units_per_batch(buffer):
        batches = list(ds.iter_torch_batches(batch_size=16, drop_last=True, local_shuffle_buffer_size=buffer))
        ids = [int(i) for b in batches for i in b["id"]]
        assert len(batches) == 3 * ID_ROWS // 16 and sorted(ids) == list(range(3 * ID_ROWS))
        return [len({i // ID_ROW_GROUP for i in b["id"].tolist()}) for b in batches]

    assert units_per_batch(None) == [1] * 12
    buffer = local_shuffle_buffer(cfg.model_copy(update={"deterministic": False, "shuffle_buffer": 96}))
    assert buffer == 96 and sum(n > 1 for n in units_per_batch(buffer)) >= 6
    release_counter("t-buffer")
