"""`build_dataset`: data config -> streaming Ray Dataset of training batches.

Batch contract (`ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=...)`):
- raw mode:     "pixel_values" float32 (B, 3, R, R) in [-1, 1], "input_ids" int64 (B, 77);
- encoded mode: "latents" float32 (B, 4, R/8, R/8) already times the VAE scaling factor,
                "encoder_hidden_states" float32 (B, 77, D).
Encoded mode is `data.encode: true`, or a source written by `maskunet data encode`.

Held-out split: `build_dataset(cfg, base, split="holdout")` keeps the rows whose content
hash (blake2b of image bytes + caption; of the latents for encoded sources) falls below
`cfg.holdout_fraction`; `split="train"` keeps the rest. Stable across runs, file order
and worker counts.

Drop counts: preprocessing reports to the named actor `counter_name`; read them from the
driver or a train worker with `stats.read_drop_counts(name)` / `stats.drop_metrics(name)`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import ray.data
from ray.data import DataContext, ExecutionOptions

from maskunet_platform.config.data import DataSection
from maskunet_platform.data.encode import add_encode_stage
from maskunet_platform.data.preprocess import PreprocessSpec, in_split, preprocess_blocks
from maskunet_platform.data.reader import ENCODED_COLUMNS, SourceInfo, inspect_source, read_columns
from maskunet_platform.data.stats import DEFAULT_COUNTER, drop_counter

SPLITS = ("all", "train", "holdout")


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


def preprocess_spec(cfg: DataSection, base: str, split: str = "all", passthrough=()) -> PreprocessSpec:
    return PreprocessSpec(
        tokenizer_dir=tokenizer_source(base), resolution=cfg.resolution, crop=cfg.crop, flip=cfg.flip,
        seed=cfg.seed, deterministic=cfg.deterministic, image_column=cfg.image_column,
        caption_column=cfg.caption_column, aesthetic_column=cfg.aesthetic_column,
        min_side=cfg.min_side, min_aesthetic=cfg.min_aesthetic, split=split,
        holdout_fraction=cfg.holdout_fraction, passthrough=tuple(passthrough),
        batch_size=cfg.preprocess_batch_size)


def output_block_bytes(cfg: DataSection) -> int:
    """Ray's target block size for this dataset: a bit under one preprocessed batch.

    Every full batch then leaves its task as its own block (no concatenation, no
    re-slicing: Ray only slices blocks over 1.5x the target), and the fused read
    gathers at most that many bytes of raw rows before handing them over.
    """
    row = 3 * cfg.resolution ** 2 * 4 + 77 * 8  # float32 pixels + int64 token ids
    return int(0.8 * cfg.preprocess_batch_size * row)


def open_source(cfg: DataSection) -> SourceInfo:
    aesthetic = cfg.aesthetic_column if cfg.min_aesthetic is not None else None
    return inspect_source(cfg.source, cfg.image_column, cfg.caption_column, aesthetic, cfg.s3_endpoint_url)


def _latent_hash(latent: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(latent).tobytes(), digest_size=8).digest(), "little")


def _split_encoded(batch: dict[str, np.ndarray], split: str, fraction: float):
    keep = np.asarray([in_split(_latent_hash(lat), split, fraction) for lat in batch["latents"]], dtype=bool)
    if keep.any():  # an empty batch would be stored as pickled objects
        yield {k: v[keep] for k, v in batch.items()}


def build_dataset(cfg: DataSection, base: str, *, split: str = "all", counter_name: str = DEFAULT_COUNTER,
                  limit: int | None = None, passthrough: tuple[str, ...] = ()) -> ray.data.Dataset:
    """The streaming training dataset described by `cfg` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    info = open_source(cfg)  # schema errors surface here, before any Ray work
    if cfg.deterministic:
        DataContext.get_current().execution_options.preserve_order = True
    if info.kind == "encoded":
        ds = read_columns(info, list(ENCODED_COLUMNS), cfg.parallelism, cfg.preprocess_batch_size)
        if limit is not None:
            ds = ds.limit(limit)
        if split != "all" and cfg.holdout_fraction > 0:
            ds = ds.map_batches(_split_encoded, fn_kwargs={"split": split, "fraction": cfg.holdout_fraction},
                                batch_format="numpy")
        return ds
    spec = preprocess_spec(cfg, base, split, passthrough)
    columns = [cfg.image_column, cfg.caption_column, *passthrough]
    if cfg.min_aesthetic is not None:
        columns.append(cfg.aesthetic_column)
    # One read task per row group (see parquet_source), fused with preprocessing below.
    ds = read_columns(info, list(dict.fromkeys(columns)), cfg.parallelism, cfg.preprocess_batch_size)
    if limit is not None:
        ds = ds.limit(limit)
    # Ray fuses the read into this stage (raw bytes never reach the object store) as long
    # as it sets no batch_size; preprocess_blocks slices its input into batches itself.
    ds = ds.map_batches(preprocess_blocks, fn_kwargs={"spec": spec, "counter": drop_counter(counter_name)},
                        batch_size=None, batch_format="pyarrow",
                        compute=ray.data.TaskPoolStrategy(size=cfg.parallelism))
    ds.context.target_max_block_size = output_block_bytes(cfg)
    if cfg.encode:
        ds = add_encode_stage(ds, spec.tokenizer_dir, actors=cfg.encode_actors, device=cfg.encode_device,
                              batch_size=cfg.preprocess_batch_size)
    return ds


def write_encoded(cfg: DataSection, base: str, out: str, counter_name: str = DEFAULT_COUNTER) -> list[str]:
    """Preprocess + encode `cfg.source` once and write latent parquet shards to `out`."""
    from maskunet_platform.data.uri import list_parquet_files, resolve_output, resolve_source

    ds = build_dataset(cfg.model_copy(update={"encode": True}), base, counter_name=counter_name)
    fs, path = resolve_output(out, cfg.s3_endpoint_url)
    fs.create_dir(path, recursive=True)
    ds.write_parquet(path, filesystem=fs)
    return list_parquet_files(resolve_source(out, cfg.s3_endpoint_url))
