"""`inspect_dataset`: stream a dataset through the real reader + preprocessing and count.

Users vet a dataset (rows in, rows out, dropped by reason) before spending GPU hours.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable, Optional

from maskunet_platform.config.data import DataSection
from maskunet_platform.data.pipeline import build_dataset
from maskunet_platform.data.stats import read_drop_counts, release_counter


def inspect_dataset(cfg: DataSection, base: str, limit: int | None = None,
                    on_rows: Optional[Callable[[int, float], None]] = None) -> dict:
    """{"rows_in": n, "rows_out": n, "dropped": {reason: n}} for `cfg.source`; `on_rows(rows
    out so far, rows per second)` after every batch."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    name = f"maskunet-inspect-{uuid.uuid4().hex[:8]}"  # private counter: no cross-talk
    try:
        ds = build_dataset(cfg, base, counter_name=name, limit=limit)
        rows_out, started = 0, time.perf_counter()
        first = "latents" if cfg.encode else "pixel_values"
        for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
            key = first if first in batch else next(iter(batch))
            rows_out += len(batch[key])
            if on_rows is not None:
                on_rows(rows_out, rows_out / max(time.perf_counter() - started, 1e-9))
        counts = read_drop_counts(name)
    finally:
        release_counter(name)
    if counts["rows_in"] == 0 and rows_out:  # encoded source: no preprocessing stage counted
        counts["rows_in"] = rows_out
    return {"rows_in": counts["rows_in"], "rows_out": rows_out, "dropped": dict(sorted(counts["dropped"].items()))}
