"""Open a dataset URI as a streaming Ray Dataset, after checking its schema.

The schema of the first parquet file is read (footer only) before any Ray work starts,
so a wrong or missing column fails in seconds with one error naming every problem.
Two layouts are accepted:
- raw laion-art: an image column (struct{bytes, path} as `datasets` writes it, or plain
  binary) and a string caption column (names configurable);
- encoded (written by `maskunet data encode`): `latents` (the VAE posterior mean),
  `latents_std` (its standard deviation; shards written before it existed lack it and
  train on the mean) and `encoder_hidden_states`.
"""
from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from maskunet_platform.data.parquet_source import ParquetFragments
from maskunet_platform.data.retry import RetryPolicy, call_with_retries
from maskunet_platform.data.units import ReadPlan
from maskunet_platform.data.uri import ResolvedSource, list_parquet_files, resolve_source

ENCODED_COLUMNS = ("latents", "encoder_hidden_states")
LATENTS_STD = "latents_std"
log = logging.getLogger("maskunet.data")


class SchemaError(ValueError):
    """The dataset's columns do not match what the pipeline needs; names each problem."""


@dataclass
class SourceInfo:
    source: ResolvedSource
    files: list[str]
    schema: pa.Schema
    kind: str  # "raw" | "encoded"


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def schema_problems(schema: pa.Schema, image_column: str, caption_column: str,
                    aesthetic_column: str | None = None) -> list[str]:
    """Everything wrong with a raw laion-art schema (empty list = fine)."""
    problems = []
    names = set(schema.names)
    if image_column not in names:
        problems.append(f"missing image column {image_column!r}")
    else:
        t = schema.field(image_column).type
        ok = _is_binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
                               and _is_binary(t.field("bytes").type))
        if not ok:
            problems.append(f"image column {image_column!r} has type {t}, expected "
                            "struct<bytes: binary, path: string> or binary")
    if caption_column not in names:
        problems.append(f"missing caption column {caption_column!r}")
    elif not _is_string(schema.field(caption_column).type):
        problems.append(f"caption column {caption_column!r} has type "
                        f"{schema.field(caption_column).type}, expected string")
    if aesthetic_column is not None:
        if aesthetic_column not in names:
            problems.append(f"missing aesthetic column {aesthetic_column!r} (needed by min_aesthetic)")
        elif not (pa.types.is_floating(t := schema.field(aesthetic_column).type) or pa.types.is_integer(t)):
            problems.append(f"aesthetic column {aesthetic_column!r} has type {t}, expected a number")
    return problems


def encoded_columns(info: SourceInfo) -> list[str]:
    """The columns to read from an encoded source (with `latents_std` when it has one)."""
    if LATENTS_STD in info.schema.names:
        return [*ENCODED_COLUMNS, LATENTS_STD]
    log.warning("data: %s has no %s column (written by an older `maskunet data encode`): training "
                "uses the VAE posterior mean instead of samples from it; re-encode to sample",
                info.source.uri, LATENTS_STD)
    return list(ENCODED_COLUMNS)


def inspect_source(uri: str, image_column: str = "image", caption_column: str = "text",
                   aesthetic_column: str | None = None, endpoint_url: str | None = None,
                   retry: RetryPolicy = RetryPolicy()) -> SourceInfo:
    """Resolve, list and schema-check `uri`; raises SchemaError/DataSourceError."""
    src = resolve_source(uri, endpoint_url)
    files = list_parquet_files(src, retry)
    what = f"reading the parquet schema of {posixpath.basename(files[0])}"
    try:
        schema = call_with_retries(lambda: pq.read_schema(files[0], filesystem=src.filesystem), what, retry)
    except (OSError, pa.ArrowInvalid) as e:
        raise SchemaError(f"{uri}: cannot read the parquet schema of {files[0]}: {e}") from None
    if all(c in schema.names for c in ENCODED_COLUMNS):
        return SourceInfo(src, files, schema, "encoded")
    problems = schema_problems(schema, image_column, caption_column, aesthetic_column)
    if problems:
        raise SchemaError(f"{uri} ({files[0]}) does not have the laion-art schema: "
                          + "; ".join(problems) + f". Columns found: {', '.join(schema.names)}")
    return SourceInfo(src, files, schema, "raw")


def open_fragments(info: SourceInfo, columns: list[str], parallelism: int | None = None,
                   rows_per_block: int = 32, plan: ReadPlan = ReadPlan()) -> ParquetFragments:
    """The datasource for `columns` of `info`: footers read, split selected, units planned."""
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    min_tasks = 2 * (parallelism or cpus)  # enough tasks to keep every CPU busy and balanced
    return ParquetFragments(info.files, info.source.filesystem, info.schema, columns, rows_per_block,
                            min_tasks, plan)


def read_columns(source: ParquetFragments, parallelism: int | None = None) -> ray.data.Dataset:
    """Streaming read of `source`: one task per read unit, blocks of `rows_per_block` rows.

    Column pruning keeps metadata (and, for encoded sources, nothing else) off the wire.
    """
    # Exactly one block stream per planned task: a larger block count would make Ray split
    # each task's output, which stops it from fusing the read with preprocessing.
    return ray.data.read_datasource(source, concurrency=parallelism,
                                    override_num_blocks=max(1, len(source.fragments)))
