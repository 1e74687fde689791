"""`build_dataset`: data config -> streaming Ray Dataset of training batches.

Batch contract (`ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=...)`):
- raw mode:     "pixel_values" uint8 (B, 3, R, R) (scale with `model_inputs.pixels_to_model`),
                "input_ids" int64 (B, 77);
- encoded mode: "latents" float32 (B, 4, R/8, R/8), the VAE posterior mean, and
                "latents_std" float32 (same shape), its standard deviation, both already
                times the VAE scaling factor (draw with `model_inputs.sample_latents`;
                shards written before `latents_std` existed lack it), and
                "encoder_hidden_states" float32 (B, 77, D).
Encoded mode is `data.encode: true`, or a source written by `maskunet data encode`.

Held-out split: `split="holdout"` reads only the held-out read units (about
`holdout_fraction` of the rows), `split="train"` everything else; decided per 32-row
read unit from footers alone (units.py). Order: the train split's row groups are read
in a new order every epoch, drawn from (data.seed, epoch) (`data.shuffle`), and training
workers mix rows in a local buffer on top (`local_shuffle_buffer`); the other splits
are read in file order.

Drop counts: preprocessing reports to the named actor `counter_name`; read them from the
driver or a train worker with `stats.read_drop_counts(name)` / `stats.drop_metrics(name)`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import ray.data
from ray.data import DataContext, ExecutionOptions

from maskunet_platform.config.data import DataSection
from maskunet_platform.data.encode import add_encode_stage
from maskunet_platform.data.preprocess import PreprocessSpec, preprocess_blocks
from maskunet_platform.data.reader import (SourceInfo, encoded_columns, inspect_source, open_fragments,
                                           read_columns)
from maskunet_platform.data.retry import RetryPolicy
from maskunet_platform.data.stats import DEFAULT_COUNTER, drop_counter
from maskunet_platform.data.units import SPLITS, ReadPlan

log = logging.getLogger("maskunet.data")


def tokenizer_source(base: str) -> str:
    """A local base folder (expanded) or a hub id; must be readable by every worker."""
    if base.startswith("s3://"):
        raise ValueError(f"base {base!r}: download an s3 base to a local/shared folder before building data")
    local = Path(base).expanduser()
    if local.exists():
        if not (local / "tokenizer").is_dir():
            raise ValueError(f"base {base!r} has no tokenizer/ folder (expected a diffusers pipeline folder)")
        return str(local.resolve())
    if base.startswith(("/", "~", ".")):
        raise ValueError(f"base {base!r} does not exist")
    return base  # a Hugging Face hub id


def execution_options(cfg: DataSection) -> ExecutionOptions:
    """Execution options for Ray Train's DataConfig; deterministic keeps row order."""
    opts = ExecutionOptions()
    opts.preserve_order = cfg.deterministic
    return opts


def local_shuffle_buffer(cfg: DataSection) -> int | None:
    """`local_shuffle_buffer_size` for `iter_torch_batches`: None when off or deterministic."""
    return None if cfg.deterministic or cfg.shuffle_buffer == 0 else cfg.shuffle_buffer


def preprocess_spec(cfg: DataSection, base: str, passthrough=()) -> PreprocessSpec:
    return PreprocessSpec(
        tokenizer_dir=tokenizer_source(base), resolution=cfg.resolution, crop=cfg.crop, flip=cfg.flip,
        seed=cfg.seed, deterministic=cfg.deterministic, image_column=cfg.image_column,
        caption_column=cfg.caption_column, aesthetic_column=cfg.aesthetic_column,
        min_side=cfg.min_side, min_aesthetic=cfg.min_aesthetic, passthrough=tuple(passthrough),
        batch_size=cfg.preprocess_batch_size)


def output_block_bytes(cfg: DataSection) -> int:
    """Ray's target block size for this dataset: a bit under one preprocessed batch.

    Every full batch then leaves its task as its own block (no concatenation, no
    re-slicing: Ray only slices blocks over 1.5x the target), and the fused read
    gathers at most that many bytes of raw rows before handing them over.
    """
    row = 3 * cfg.resolution ** 2 + 77 * 8  # uint8 pixels + int64 token ids
    return int(0.8 * cfg.preprocess_batch_size * row)


def open_source(cfg: DataSection) -> SourceInfo:
    aesthetic = cfg.aesthetic_column if cfg.min_aesthetic is not None else None
    return inspect_source(cfg.source, cfg.image_column, cfg.caption_column, aesthetic, cfg.s3_endpoint_url,
                          RetryPolicy(cfg.read_retries, cfg.read_retry_backoff_s))


def read_plan(cfg: DataSection, split: str, resume_rows: int) -> ReadPlan:
    return ReadPlan(split=split, holdout_fraction=cfg.holdout_fraction,
                    # Only training wants a new order per epoch; eval, inspect and encode read in file order.
                    shuffle=cfg.shuffle and split == "train",
                    seed=cfg.seed, resume_rows=resume_rows,
                    retry=RetryPolicy(cfg.read_retries, cfg.read_retry_backoff_s))


def build_dataset(cfg: DataSection, base: str, *, split: str = "all", counter_name: str = DEFAULT_COUNTER,
                  limit: int | None = None, passthrough: tuple[str, ...] = (),
                  resume_rows: int = 0, source: SourceInfo | None = None) -> ray.data.Dataset:
    """The streaming dataset of `split` described by `cfg` (see the module docstring).

    `source`: the already opened source (`open_source(cfg)`: files, schema, filesystem), for
    a process other than the one that opened it, e.g. Ray Train's controller rebuilding the
    dataset on a restart with the driver's filesystem settings.

    `resume_rows`: how many rows of this split the run had consumed before it restarted,
    over all its epochs and workers, counted as rows read from the source (before
    preprocessing drops). With rows_per_epoch = the split's rows, the stream starts at
    epoch E = resume_rows // rows_per_epoch, in epoch E's order, without the leading read
    units (row-group ranges as planned) that the first resume_rows % rows_per_epoch rows
    of that order cover completely; a unit only partly covered is read again in full, and
    epochs after E are complete. Each Ray Data execution of the returned dataset (one per
    training epoch) moves on to the next epoch.
    Guaranteed: for the same source, data.seed and holdout_fraction, epoch E's row
    sequence is the one the interrupted run was reading (whatever the worker or CPU
    count); no unit before the resume point is read again; every unit from it on is read.
    Not guaranteed: that the interrupted run had consumed exactly that prefix. Ray reads
    several units at once and workers prefetch and buffer (local shuffle buffer), so
    within about one in-flight window (concurrent units + prefetched batches + buffer) of
    the point, rows already trained on may be read again and rows that were only
    buffered, never trained on, may be skipped for this epoch. Counting trained rows
    instead of read rows (drops, `drop_last` leftovers) undercounts: more re-reading,
    never more skipping.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if resume_rows < 0:
        raise ValueError(f"resume_rows must be >= 0, got {resume_rows}")
    info = source or open_source(cfg)  # schema errors surface here, before any Ray work
    if cfg.deterministic:
        DataContext.get_current().execution_options.preserve_order = True
    encoded = info.kind == "encoded"
    columns = encoded_columns(info) if encoded else _raw_columns(cfg, passthrough)
    source = open_fragments(info, columns, cfg.parallelism, cfg.preprocess_batch_size,
                            read_plan(cfg, split, resume_rows))
    if resume_rows:
        left = source.epoch_fragments(source.start_epoch)
        log.info("data: resuming the %s split at epoch %d: %d of its %d read units (%d of %d rows) were "
                 "consumed and are skipped", split, source.start_epoch, len(source.fragments) - len(left),
                 len(source.fragments), source.rows_per_epoch - sum(f.num_rows for f in left), source.rows_per_epoch)
    ds = read_columns(source, cfg.parallelism)
    if limit is not None:
        ds = ds.limit(limit)
    if encoded:
        return ds
    spec = preprocess_spec(cfg, base, passthrough)
    # Ray fuses the read into this stage (raw bytes never reach the object store) as long
    # as it sets no batch_size; preprocess_blocks slices its input into batches itself.
    ds = ds.map_batches(preprocess_blocks, fn_kwargs={"spec": spec, "counter": drop_counter(counter_name)},
                        batch_size=None, batch_format="pyarrow",
                        compute=ray.data.TaskPoolStrategy(size=cfg.parallelism))
    ds.context.target_max_block_size = output_block_bytes(cfg)
    if cfg.encode:
        ds = add_encode_stage(ds, spec.tokenizer_dir, actors=cfg.encode_actors, device=cfg.encode_device,
                              batch_size=cfg.preprocess_batch_size, gpu_fraction=cfg.encode_gpu_fraction)
    return ds


def iter_local_batches(cfg: DataSection, base: str, *, split: str, rows: int, batch_size: int,
                       counter_name: str = DEFAULT_COUNTER):
    """The first `rows` rows of `split` in file order, in torch batches of `batch_size`, read
    and preprocessed in this process by the same read units and functions as `build_dataset`
    (so the same rows, pixels and tokens as its deterministic order gives).

    For a few held-out rows Ray Data's start-up (executor, read tasks and their processes)
    costs seconds more than the reading itself. Encoded sources go through `build_dataset`."""
    import numpy as np
    import torch

    info = open_source(cfg)
    if info.kind == "encoded" or not cfg.deterministic:
        ds = build_dataset(cfg, base, split=split, counter_name=counter_name, source=info).limit(rows)
        yield from ds.iter_torch_batches(batch_size=batch_size)
        return
    source = open_fragments(info, _raw_columns(cfg, ()), cfg.parallelism, cfg.preprocess_batch_size,
                            read_plan(cfg, split, 0))
    spec = preprocess_spec(cfg, base)  # drops are logged; no counter actor to start for them
    pending, have, left = [], 0, rows
    for task in source.get_read_tasks(1):
        for block in task():
            for out in preprocess_blocks(block, spec):
                pending.append(out)
                have += len(out["input_ids"])
                while left and have >= min(batch_size, left):
                    n = min(batch_size, left)
                    merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
                    yield {k: torch.from_numpy(v[:n]) for k, v in merged.items()}
                    pending, have, left = [{k: v[n:] for k, v in merged.items()}], have - n, left - n
                if not left:
                    return
    if have and left:  # fewer rows than asked for: the last, partial batch
        yield {k: torch.from_numpy(np.concatenate([p[k] for p in pending])) for k in pending[0]}


def _raw_columns(cfg: DataSection, passthrough: tuple[str, ...]) -> list[str]:
    columns = [cfg.image_column, cfg.caption_column, *passthrough]
    if cfg.min_aesthetic is not None:
        columns.append(cfg.aesthetic_column)
    return list(dict.fromkeys(columns))


def write_encoded(cfg: DataSection, base: str, out: str, counter_name: str = DEFAULT_COUNTER) -> list[str]:
    """Preprocess + encode `cfg.source` once and write latent parquet shards to `out`."""
    from maskunet_platform.data.uri import list_parquet_files, resolve_output, resolve_source

    ds = build_dataset(cfg.model_copy(update={"encode": True}), base, counter_name=counter_name)
    fs, path = resolve_output(out, cfg.s3_endpoint_url)
    fs.create_dir(path, recursive=True)
    ds.write_parquet(path, filesystem=fs)
    return list_parquet_files(resolve_source(out, cfg.s3_endpoint_url))
