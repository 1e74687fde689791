"""Read units: the held-out split, the order of each epoch and where a resumed run starts.

A unit is `UNIT_ROWS` consecutive rows of one row group of one file (the last unit of a
row group may be shorter). Everything here is decided on the driver from parquet
footers alone, before any image is read:

- Held-out split: units are ranked by a stable hash of (file basename, row group, unit
  index) and the lowest-ranked units are held out until they hold `holdout_fraction` of
  the rows (at least one unit, never every unit). The held-out split plans only those
  units, so it decodes about `holdout_fraction` of the rows (storage I/O is per row group:
  a held-out unit fetches its row group's column chunk); the train split plans
  everything else, row groups with held-out units as the ranges around them. The split
  depends only on file names, row-group layout and the fraction: not on file order,
  folder, worker or CPU counts, batch sizes or seeds.
- Epoch order: each epoch visits the split's ranges (whole row groups, or the ranges
  between held-out units) in a permutation drawn from (data.seed, epoch); epoch k of
  every run with the same seed and data has the same row sequence, whatever the
  cluster (ranges are cut into pieces for parallelism only after ordering).
- Resume: a run that already consumed R rows of the split starts at epoch
  R // rows_per_epoch and leaves out the leading pieces of that epoch's sequence that
  the remaining R % rows_per_epoch rows wholly cover (see `pipeline.build_dataset`).
"""
from __future__ import annotations

import hashlib
import math
import posixpath
from dataclasses import dataclass, field, replace

import numpy as np

from maskunet_platform.data.retry import RetryPolicy

UNIT_ROWS = 32
SPLITS = ("all", "train", "holdout")


@dataclass(frozen=True)
class Fragment:
    """One unit of reading: rows [start, start + num_rows) of a row group of a file."""
    path: str
    row_group: int
    num_rows: int
    size_bytes: int  # uncompressed size of the selected columns
    start: int = 0

    def part(self, start: int, num_rows: int) -> "Fragment":
        """Rows [start, start + num_rows) of the same row group (absolute row numbers)."""
        return replace(self, start=start, num_rows=num_rows, size_bytes=self.size_bytes * num_rows // self.num_rows)


@dataclass(frozen=True)
class ReadPlan:
    """What a datasource plans: which split, in which order, from where, with which retries."""
    split: str = "all"
    holdout_fraction: float = 0.0
    shuffle: bool = False
    seed: int = 0
    resume_rows: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def unit_rank(path: str, row_group: int, index: int) -> int:
    """Stable 64-bit hash of a unit; the basename keeps it across folders and stores."""
    key = f"{posixpath.basename(path)}\0{row_group}\0{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def units_of(fragment: Fragment) -> list[Fragment]:
    """A whole row group cut into units of `UNIT_ROWS` rows."""
    return [fragment.part(s, min(UNIT_ROWS, fragment.num_rows - s)) for s in range(0, fragment.num_rows, UNIT_ROWS)]


def holdout_units(row_groups: list[Fragment], fraction: float) -> set[tuple[str, int, int]]:
    """(path, row_group, start) of the held-out units (see the module docstring)."""
    units = [u for rg in row_groups for u in units_of(rg)]
    if fraction <= 0 or not units:
        return set()
    if len(units) < 2:
        raise ValueError(f"data.holdout_fraction={fraction}: the source has a single read unit "
                         f"({units[0].num_rows} rows), nothing would be left to train on")
    units.sort(key=lambda u: (unit_rank(u.path, u.row_group, u.start // UNIT_ROWS), u.path, u.row_group, u.start))
    target = math.ceil(fraction * sum(u.num_rows for u in units))
    chosen, rows = set(), 0
    for u in units[:-1]:  # never every unit
        if rows >= target:
            break
        chosen.add((u.path, u.row_group, u.start))
        rows += u.num_rows
    return chosen


def _ranges(rg: Fragment, held: set[tuple[str, int, int]], keep_held: bool) -> list[Fragment]:
    """Maximal runs of consecutive units of `rg` that are (keep_held) or are not held out."""
    out: list[Fragment] = []
    for unit in units_of(rg):
        if ((unit.path, unit.row_group, unit.start) in held) != keep_held:
            continue
        last = out[-1] if out else None
        if last is not None and last.start + last.num_rows == unit.start:
            out[-1] = rg.part(last.start, last.num_rows + unit.num_rows)
        else:
            out.append(unit)
    return out


def select_split(row_groups: list[Fragment], split: str, fraction: float) -> list[Fragment]:
    """The fragments of `split`: whole row groups, or the ranges around/of held-out units."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "holdout" and fraction <= 0:
        raise ValueError("the held-out split needs data.holdout_fraction > 0")
    if split == "all" or fraction <= 0:
        return list(row_groups)
    held = holdout_units(row_groups, fraction)
    return [part for rg in row_groups for part in _ranges(rg, held, keep_held=split == "holdout")]


def epoch_order(fragments: list[Fragment], seed: int, epoch: int) -> list[Fragment]:
    """The fragments in epoch `epoch`'s order: a permutation drawn from (seed, epoch)."""
    rng = np.random.default_rng([seed % 2 ** 63, epoch])
    return [fragments[i] for i in rng.permutation(len(fragments))]


def skip_consumed(ordered: list[Fragment], rows: int) -> tuple[list[Fragment], int]:
    """(the fragments left, rows skipped): leading fragments wholly inside the first `rows`."""
    skipped = 0
    for i, frag in enumerate(ordered):
        if skipped + frag.num_rows > rows:
            return ordered[i:], skipped
        skipped += frag.num_rows
    return [], skipped
