"""A Ray Data datasource over an already-listed set of parquet files: one read task per read unit.

Why not `ray.data.read_parquet`: the reader has listed and schema-checked the files
already, and Ray's own path resolution, file listing and metadata sampling cost seconds
per dataset even for a handful of local files. Here the driver reads each file's footer
once (in a thread pool, so remote stores overlap their round trips), selects the rows of
the requested split (`units.select_split`), cuts the result into more pieces when there
are fewer than `min_tasks` (so one big file still keeps every CPU busy), and every task
streams its rows in blocks of `rows_per_block` rows. Footer and row-group reads are
retried on transient errors (`retry.RetryPolicy`).

Each execution of the dataset (in Ray Train: each epoch, run by the streaming-split
coordinator) asks `get_read_tasks` for its tasks and gets them in that epoch's order.
"""
from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from maskunet_platform.data.retry import RetryPolicy, call_with_retries
from maskunet_platform.data.units import Fragment, ReadPlan, epoch_order, select_split, skip_consumed

FOOTER_THREADS = 16

__all__ = ["Fragment", "ParquetFragments", "plan_fragments", "read_fragment", "split_fragments"]


def split_fragments(fragments: list[Fragment], min_tasks: int, rows_per_block: int) -> list[Fragment]:
    """Cut fragments into pieces of whole blocks, aiming at >= `min_tasks` pieces.

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
        out.extend(f.part(f.start + s, min(step, f.num_rows - s)) for s in range(0, f.num_rows, step))
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


def plan_fragments(files: list[str], filesystem: pafs.FileSystem, columns: list[str],
                   retry: RetryPolicy = RetryPolicy()) -> list[Fragment]:
    """Every non-empty row group of `files`, in file order (footers read concurrently, retried)."""
    def footer(path: str) -> list[Fragment]:
        return call_with_retries(lambda: _fragments(path, filesystem, columns),
                                 f"reading the parquet footer of {posixpath.basename(path)}", retry)

    if len(files) == 1:
        return footer(files[0])
    with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
        return [frag for frags in pool.map(footer, files) for frag in frags]


def _read_rows(fragment: Fragment, filesystem: pafs.FileSystem, columns: list[str], rows_per_block: int,
               first: int):
    """Rows [first, end of fragment) as tables of <= `rows_per_block` rows; `first` absolute."""
    end = fragment.start + fragment.num_rows
    with filesystem.open_input_file(fragment.path) as f:
        batches = pq.ParquetFile(f).iter_batches(batch_size=rows_per_block, row_groups=[fragment.row_group],
                                                 columns=columns, use_threads=False)
        pos = 0  # row number (within the row group) of the batch's first row
        for batch in batches:
            lo, hi = max(first, pos), min(end, pos + batch.num_rows)
            pos += batch.num_rows
            if hi > lo:
                yield pa.Table.from_batches([batch.slice(lo - pos + batch.num_rows, hi - lo)])
            if pos >= end:
                return


def read_fragment(fragment: Fragment, filesystem: pafs.FileSystem, columns: list[str], rows_per_block: int,
                  retry: RetryPolicy = RetryPolicy(retries=0)):
    """Yield the fragment's rows as pyarrow tables of at most `rows_per_block` rows.

    A transient error mid-way reopens the file and continues after the rows already
    yielded, so a retry never yields a row twice.
    """
    what = f"reading row group {fragment.row_group} of {posixpath.basename(fragment.path)}"
    done, attempt = 0, 0
    while True:
        attempt += 1
        rows = _read_rows(fragment, filesystem, columns, rows_per_block, fragment.start + done)
        while True:
            try:
                table = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # classified by the policy: permanent errors re-raise
                retry.handle(exc, attempt, what)
                break
            done += table.num_rows
            yield table


class ParquetFragments(Datasource):
    """`ray.data.read_datasource(ParquetFragments(...))`: streaming, column-pruned, per read unit."""

    def __init__(self, files: list[str], filesystem: pafs.FileSystem, schema: pa.Schema,
                 columns: list[str], rows_per_block: int = 32, min_tasks: int = 1, plan: ReadPlan = ReadPlan()):
        super().__init__()
        self.filesystem = filesystem
        self.columns = list(columns)
        self.schema = pa.schema([schema.field(c) for c in self.columns])
        self.rows_per_block = rows_per_block
        self.min_tasks = min_tasks
        self.plan = plan
        row_groups = plan_fragments(files, filesystem, self.columns, plan.retry)
        # Orders start from (basename, row group, start): the same for any listing order or
        # folder; pieces for `min_tasks` are cut after ordering, so the row sequence of an
        # epoch (and a resume point in it) does not depend on the cluster's CPU count.
        self.units = sorted(select_split(row_groups, plan.split, plan.holdout_fraction),
                            key=lambda f: (posixpath.basename(f.path), f.path, f.row_group, f.start))
        self.fragments = split_fragments(self.units, min_tasks, rows_per_block)
        self.rows_per_epoch = sum(f.num_rows for f in self.units)
        self.start_epoch, self.skip_rows = divmod(plan.resume_rows, self.rows_per_epoch or 1)
        self.executions = 0  # executions planned by this copy of the datasource (one per epoch)

    def get_name(self) -> str:
        return "ParquetFragments"

    def estimate_inmemory_data_size(self) -> None:
        # Unknown on purpose: every task already streams blocks of `rows_per_block` rows,
        # and a size estimate only makes Ray split the read's output blocks further,
        # which stops it from fusing the read with preprocessing (raw bytes would then
        # round-trip through the object store and the two stages compete for CPUs).
        return None

    def epoch_fragments(self, epoch: int) -> list[Fragment]:
        """The fragments epoch `epoch` reads, in order (the resume epoch without its consumed units)."""
        units = epoch_order(self.units, self.plan.seed, epoch) if self.plan.shuffle else self.units
        ordered = split_fragments(units, self.min_tasks, self.rows_per_block)
        if epoch == self.start_epoch and self.skip_rows:
            ordered, _ = skip_consumed(ordered, self.skip_rows)
        return ordered

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        # Ray 2.60 passes `data_context` only when planning an execution (plan_read_op);
        # its metadata and parallelism probes call without it and must not advance the epoch.
        epoch = self.start_epoch + self.executions
        if data_context is not None:
            self.executions += 1
        fs, columns, rows, retry = self.filesystem, self.columns, self.rows_per_block, self.plan.retry
        tasks = []
        for frag in self.epoch_fragments(epoch):
            meta = BlockMetadata(num_rows=frag.num_rows, size_bytes=frag.size_bytes,
                                 input_files=[frag.path], exec_stats=None)
            tasks.append(ReadTask(
                lambda frag=frag: read_fragment(frag, fs, columns, rows, retry),
                meta, schema=self.schema, per_task_row_limit=per_task_row_limit))  # Ray slices
        return tasks
