"""Row-group planning of the parquet datasource (no Ray needed)."""
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from maskunet_platform.data.parquet_source import Fragment, plan_fragments, read_fragment, split_fragments


def test_row_groups_are_planned_split_and_read_exactly_once(tmp_path):
    table = pa.table({"i": list(range(100)), "extra": ["x"] * 100})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=60)  # row groups of 60 + 40
    pq.write_table(table.slice(0, 10), tmp_path / "b.parquet")
    fs, files = pafs.LocalFileSystem(), [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    frags = plan_fragments(files, fs, ["i"])
    assert [(f.row_group, f.num_rows) for f in frags] == [(0, 60), (1, 40), (0, 10)]
    for min_tasks, n_pieces in ((1, 3), (3, 3), (8, 6), (50, 8)):  # at most 4 + 3 + 1 blocks of 16
        pieces = split_fragments(frags, min_tasks, rows_per_block=16)
        assert len(pieces) == n_pieces
        blocks = [t for p in pieces for t in read_fragment(p, fs, ["i"], 16)]
        assert all(t.num_rows <= 16 and t.column_names == ["i"] for t in blocks)
        got = [v for t in blocks for v in t.column("i").to_pylist()]
        assert got == list(range(100)) + list(range(10))  # every row once, in order
    assert split_fragments([Fragment("p", 0, 5, 5)], 4, 16) == [Fragment("p", 0, 5, 5)]


def test_unaligned_ranges_read_exactly_their_rows(tmp_path):
    pq.write_table(pa.table({"i": list(range(100))}), tmp_path / "a.parquet", row_group_size=100)
    fs, whole = pafs.LocalFileSystem(), plan_fragments([str(tmp_path / "a.parquet")], pafs.LocalFileSystem(), ["i"])[0]
    for start, rows in ((0, 100), (5, 10), (30, 37), (64, 36), (99, 1)):
        got = [v for t in read_fragment(whole.part(start, rows), fs, ["i"], 16) for v in t.column("i").to_pylist()]
        assert got == list(range(start, start + rows))
    pieces = split_fragments([whole.part(40, 60)], 3, rows_per_block=16)  # cut from its own start
    assert [(p.start, p.num_rows) for p in pieces] == [(40, 32), (72, 28)]
