"""A Ray Data datasource over an already-listed set of parquet files: one read task per row group.

Why not `ray.data.read_parquet`: the reader has listed and schema-checked the files
already, and Ray's own path resolution, file listing and metadata sampling cost seconds
per dataset even for a handful of local files. Here the driver reads each file's footer
once (in a thread pool, so remote stores overlap their round trips), plans one task per
row group with its exact row count (cutting row groups into row ranges when there are
fewer than `min_tasks`, so one big file still keeps every CPU busy), and every task
streams its rows in blocks of `rows_per_block` rows.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

FOOTER_THREADS = 16


@dataclass(frozen=True)
class Fragment:
    """One unit of reading: rows [start, start + num_rows) of a row group of a file."""
    path: str
    row_group: int
    num_rows: int
    size_bytes: int  # uncompressed size of the selected columns
    start: int = 0


def split_fragments(fragments: list[Fragment], min_tasks: int, rows_per_block: int) -> list[Fragment]:
    """Cut row groups into block-aligned row ranges, aiming at >= `min_tasks` units.

    A file with one big row group would otherwise be one task on one core. Each piece
    re-reads its row group's (compressed) bytes but decodes only its own images, which
    is where the time goes.
    """
    if not fragments or len(fragments) >= min_tasks:
        return fragments
    per = -(-min_tasks // len(fragments))
    out = []
    for f in fragments:
        blocks = -(-f.num_rows // rows_per_block)
        step = -(-blocks // min(per, blocks)) * rows_per_block
        for start in range(0, f.num_rows, step):
            rows = min(step, f.num_rows - start)
            out.append(Fragment(f.path, f.row_group, rows, f.size_bytes * rows // f.num_rows, start))
    return out


def _fragments(path: str, filesystem: pafs.FileSystem, columns: list[str]) -> list[Fragment]:
    with filesystem.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    wanted, out = set(columns), []
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        size = sum(rg.column(c).total_uncompressed_size for c in range(rg.num_columns)
                   if rg.column(c).path_in_schema.split(".")[0] in wanted)
        if rg.num_rows:
            out.append(Fragment(path, i, rg.num_rows, int(size)))
    return out


def plan_fragments(files: list[str], filesystem: pafs.FileSystem, columns: list[str]) -> list[Fragment]:
    """Every non-empty row group of `files`, in file order (footers read concurrently)."""
    if len(files) == 1:
        return _fragments(files[0], filesystem, columns)
    with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
        per_file = pool.map(lambda p: _fragments(p, filesystem, columns), files)
        return [frag for frags in per_file for frag in frags]


def read_fragment(fragment: Fragment, filesystem: pafs.FileSystem, columns: list[str], rows_per_block: int):
    """Yield the fragment's rows as pyarrow tables of at most `rows_per_block` rows."""
    skip, remaining = fragment.start // rows_per_block, fragment.num_rows  # starts are block-aligned
    with filesystem.open_input_file(fragment.path) as f:
        batches = pq.ParquetFile(f).iter_batches(batch_size=rows_per_block, row_groups=[fragment.row_group],
                                                 columns=columns, use_threads=False)
        for i, batch in enumerate(batches):
            if i < skip:
                continue
            if remaining <= 0:
                return
            batch = batch.slice(0, remaining)
            remaining -= batch.num_rows
            yield pa.Table.from_batches([batch])


class ParquetFragments(Datasource):
    """`ray.data.read_datasource(ParquetFragments(...))`: streaming, column-pruned, per row group."""

    def __init__(self, files: list[str], filesystem: pafs.FileSystem, schema: pa.Schema,
                 columns: list[str], rows_per_block: int = 32, min_tasks: int = 1):
        super().__init__()
        self.filesystem = filesystem
        self.columns = list(columns)
        self.schema = pa.schema([schema.field(c) for c in self.columns])
        self.rows_per_block = rows_per_block
        self.fragments = split_fragments(plan_fragments(files, filesystem, self.columns), min_tasks, rows_per_block)

    def get_name(self) -> str:
        return "ParquetFragments"

    def estimate_inmemory_data_size(self) -> None:
        # Unknown on purpose: every task already streams blocks of `rows_per_block` rows,
        # and a size estimate only makes Ray split the read's output blocks further,
        # which stops it from fusing the read with preprocessing (raw bytes would then
        # round-trip through the object store and the two stages compete for CPUs).
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        fs, columns, rows = self.filesystem, self.columns, self.rows_per_block
        tasks = []
        for frag in self.fragments:
            meta = BlockMetadata(num_rows=frag.num_rows, size_bytes=frag.size_bytes,
                                 input_files=[frag.path], exec_stats=None)
            tasks.append(ReadTask(
                lambda frag=frag: read_fragment(frag, fs, columns, rows),
                meta, schema=self.schema, per_task_row_limit=per_task_row_limit))  # Ray slices
        return tasks
