"""Read units without Ray: held-out split, per-epoch order, resume point, epoch counting."""
import shutil

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from maskunet_platform.data.parquet_source import ParquetFragments, plan_fragments, read_fragment, split_fragments
from maskunet_platform.data.units import UNIT_ROWS, ReadPlan, epoch_order, select_split, skip_consumed

FS = pafs.LocalFileSystem()


def _write(folder, files: int, rows: int, row_group_size: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = folder / f"train-{k:05d}-of-{files:05d}.parquet"
        ids = [f"{path.name}:{i}" for i in range(rows)]
        pq.write_table(pa.table({"id": ids}), path, row_group_size=row_group_size)
        paths.append(str(path))
    return paths


def _ids(fragments) -> list[str]:
    return [v for f in fragments for t in read_fragment(f, FS, ["id"], 16) for v in t.column("id").to_pylist()]


def _split_ids(files, split, fraction, min_tasks=1) -> list[str]:
    chosen = select_split(plan_fragments(files, FS, ["id"]), split, fraction)
    return _ids(split_fragments(chosen, min_tasks, 16))


def test_holdout_units_are_disjoint_complete_sized_and_stable(tmp_path):
    files = _write(tmp_path / "a", files=5, rows=300, row_group_size=100)  # 60 units, 1500 rows
    train, holdout = _split_ids(files, "train", 0.1), _split_ids(files, "holdout", 0.1)
    assert not set(train) & set(holdout) and len(train) == len(set(train))
    assert sorted(train + holdout) == sorted(_split_ids(files, "all", 0.1))
    assert 150 <= len(holdout) < 150 + UNIT_ROWS  # ~holdout_fraction of the rows, whole units
    assert len({h.rsplit(":", 1)[0] for h in holdout}) > 1  # spread over files, not a prefix
    # Stable across file order, folder (a copy elsewhere) and task counts (CPUs / workers).
    copy = shutil.copytree(tmp_path / "a", tmp_path / "elsewhere")
    moved = sorted(str(p) for p in copy.glob("*.parquet"))[::-1]
    assert sorted(_split_ids(moved, "holdout", 0.1, min_tasks=40)) == sorted(holdout)
    assert sorted(_split_ids(files[::-1], "train", 0.1, min_tasks=7)) == sorted(train)
    # A larger fraction holds out more, still disjoint from its own train split.
    assert len(_split_ids(files, "holdout", 0.3)) >= 450


def test_small_datasets_still_get_a_holdout_and_bad_fractions_fail_clearly(tmp_path):
    files = _write(tmp_path, files=4, rows=80, row_group_size=80)  # like the sample data: 12 units
    holdout = _split_ids(files, "holdout", 0.001)
    assert 0 < len(holdout) <= UNIT_ROWS
    assert len(_split_ids(files, "train", 0.001)) == 320 - len(holdout)
    assert len(_split_ids(files, "holdout", 0.15)) >= 48
    with pytest.raises(ValueError, match="holdout_fraction > 0"):
        _split_ids(files, "holdout", 0.0)
    one = _write(tmp_path / "one", files=1, rows=10, row_group_size=10)
    with pytest.raises(ValueError, match="holdout_fraction.*single read unit"):
        _split_ids(one, "train", 0.1)
    with pytest.raises(ValueError, match="split must be one of"):
        _split_ids(files, "test", 0.1)


def test_epoch_order_is_a_seeded_permutation_per_epoch_and_resume_skips_whole_units(tmp_path):
    frags = split_fragments(plan_fragments(_write(tmp_path, 3, 100, 50), FS, ["id"]), 12, 16)
    e0, e1 = epoch_order(frags, 7, 0), epoch_order(frags, 7, 1)
    assert sorted(map(repr, e0)) == sorted(map(repr, frags)) and e0 != e1 and e0 != frags
    assert epoch_order(frags, 7, 1) == e1 and epoch_order(frags, 8, 1) != e1
    rest, skipped = skip_consumed(e0, e0[0].num_rows + e0[1].num_rows + 1)  # 2 units and a row of the third
    assert rest == e0[2:] and skipped == e0[0].num_rows + e0[1].num_rows
    assert skip_consumed(e0, 0) == (e0, 0) and skip_consumed(e0, 10 ** 6) == ([], 300)


def test_only_executions_advance_the_epoch_and_resume_starts_mid_epoch(tmp_path):
    files = _write(tmp_path, 3, 100, 50)
    schema = pa.schema([("id", pa.string())])
    plain = ParquetFragments(files, FS, schema, ["id"], 16, min_tasks=12, plan=ReadPlan(shuffle=True, seed=3))
    per_epoch = plain.rows_per_epoch
    assert per_epoch == 300

    def rows(source, **kw):
        tasks = source.get_read_tasks(1, **kw)
        return [v for task in tasks for block in task() for v in block.column("id").to_pylist()]

    probe = rows(plain)  # metadata / parallelism probes: no data_context, no new epoch
    assert rows(plain) == probe and plain.executions == 0
    epoch0, epoch1 = rows(plain, data_context=object()), rows(plain, data_context=object())
    assert epoch0 == probe and epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0) and len(epoch0) == 300
    resumed = ParquetFragments(files, FS, schema, ["id"], 16, min_tasks=12,
                               plan=ReadPlan(shuffle=True, seed=3, resume_rows=per_epoch + 40))
    first = rows(resumed, data_context=object())  # epoch 1, without the units the 40 rows cover
    assert first == epoch1[len(epoch1) - len(first):] and 300 - 40 <= len(first) < 300 - 40 + UNIT_ROWS
    assert rows(resumed, data_context=object()) == rows(plain, data_context=object())  # then epoch 2, whole
    # The row sequence of an epoch does not depend on how many pieces the CPU count asks for,
    # nor on the listing order: a run resumed on a different cluster continues the same sequence.
    other = ParquetFragments(files[::-1], FS, schema, ["id"], 16, min_tasks=1, plan=ReadPlan(shuffle=True, seed=3))
    assert rows(other, data_context=object()) == epoch0 and rows(other, data_context=object()) == epoch1
