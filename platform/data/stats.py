"""Counts of rows seen, kept and dropped (by reason), shared across Ray Data tasks.

Preprocessing tasks report each batch to one named actor, so the driver and the Ray
Train workers (same Ray job, same namespace) can read the totals at any time with
`read_drop_counts(name)` and log them as metrics.
"""
from __future__ import annotations

import logging
from collections import Counter

import ray

DEFAULT_COUNTER = "maskunet-data-drops"
log = logging.getLogger("maskunet.data")


@ray.remote(num_cpus=0)  # bookkeeping only: must not take a CPU slot from preprocessing
class DropCounter:
    def __init__(self) -> None:
        self.rows_in = 0
        self.rows_out = 0
        self.dropped: Counter = Counter()

    def add(self, rows_in: int, rows_out: int, dropped: dict[str, int]) -> None:
        self.rows_in += rows_in
        self.rows_out += rows_out
        self.dropped.update(dropped)

    def snapshot(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "dropped": dict(self.dropped)}

    def reset(self) -> None:
        self.__init__()


# Named (non-detached) actors still die when their last handle goes away; the driver
# keeps one per name so the counts outlive any single Dataset object.
_HANDLES: dict[str, object] = {}


def on_this_node() -> dict:
    """Actor options that place a driver-owned actor on the driver's node (soft: anywhere if
    that node cannot host it), so losing a worker node does not take the actor with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)}


def drop_counter(name: str = DEFAULT_COUNTER):
    """The named counter actor, created on first use, on this (the driver's) node."""
    handle = DropCounter.options(name=name, get_if_exists=True, **on_this_node()).remote()
    _HANDLES[name] = handle
    return handle


def read_drop_counts(name: str = DEFAULT_COUNTER) -> dict:
    """{"rows_in", "rows_out", "dropped": {reason: n}} so far; zeros if nothing ran yet."""
    try:
        actor = ray.get_actor(name)
    except ValueError:
        return {"rows_in": 0, "rows_out": 0, "dropped": {}}
    return ray.get(actor.snapshot.remote())


def drop_metrics(name: str = DEFAULT_COUNTER, prefix: str = "data/") -> dict[str, float]:
    """Flat metrics for a tracker: data/rows_in, data/rows_out, data/dropped_<reason>; none
    when the counter was lost (its node died): counts are bookkeeping, training goes on."""
    try:
        snap = read_drop_counts(name)
    except ray.exceptions.RayActorError as e:
        log.warning("data row counter %s is gone (%s); data/ metrics stop here", name, type(e).__name__)
        return {}
    metrics = {f"{prefix}rows_in": snap["rows_in"], f"{prefix}rows_out": snap["rows_out"]}
    metrics.update({f"{prefix}dropped_{k}": v for k, v in snap["dropped"].items()})
    return metrics


def log_drop_counts(name: str = DEFAULT_COUNTER) -> dict:
    snap = read_drop_counts(name)
    log.info("data: %d rows in, %d out, dropped %s", snap["rows_in"], snap["rows_out"], snap["dropped"] or "none")
    return snap


def release_counter(name: str) -> None:
    _HANDLES.pop(name, None)
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass
