"""`maskunet data sample|inspect|encode`."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from maskunet_platform.config.model import ModelSection

DEFAULT_BASE = ModelSection().base

base_option = click.option(
    "--base", envvar="MASKUNET_BASE", default=DEFAULT_BASE, show_default=True,
    help="Base pipeline whose tokenizer (and VAE/text encoder for encode) is used; "
         "the tiny offline base is built there if the default location is empty.")
endpoint_option = click.option(
    "--endpoint-url", envvar="AWS_ENDPOINT_URL", default=None,
    help="S3-compatible endpoint (MinIO, moto); default: AWS_ENDPOINT_URL.")
address_option = click.option(
    "--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address; default: start Ray locally.")


def _ensure_base(base: str) -> str:
    path = Path(base).expanduser()
    if base == DEFAULT_BASE and not path.exists():
        from maskunet.tiny import ensure_tiny_base

        click.echo(f"building the tiny offline base at {path}", err=True)
        ensure_tiny_base(path)
    return base


def _ensure_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)


@click.group()
def data() -> None:
    """Sample, inspect and encode laion-art-schema datasets."""


@data.command()
@click.option("--out", required=True, help="Output folder or s3:// prefix.")
@click.option("--rows", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--shards", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=96, show_default=True,
              help="Smallest image side in pixels (sides vary up to 1.5x).")
@endpoint_option
def sample(out, rows, shards, seed, image_size, endpoint_url) -> None:
    """Write synthetic laion-art-schema parquet shards (captions describe the shapes)."""
    from maskunet_platform.data.sample import write_sample

    try:
        paths = write_sample(out, rows, shards, seed, image_size, endpoint_url)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"wrote {rows} rows in {len(paths)} shards to {out}")


@data.command(name="inspect")
@click.argument("uri")
@click.option("--resolution", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N rows.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--image-column", default="image", show_default=True)
@click.option("--caption-column", default="text", show_default=True)
@base_option
@endpoint_option
@address_option
def inspect_cmd(uri, resolution, limit, as_json, image_column, caption_column, base, endpoint_url, address):
    """Stream URI through the reader and preprocessing; report rows in/out and drops."""
    from maskunet_platform.config.data import DataSection
    from maskunet_platform.data.inspect import inspect_dataset

    cfg = _config(DataSection, source=uri, resolution=resolution, image_column=image_column,
                  caption_column=caption_column, s3_endpoint_url=endpoint_url)
    # Ray and library chatter goes to stderr so --json leaves exactly one object on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        _ensure_ray(address)
        report = _run(lambda: inspect_dataset(cfg, _ensure_base(base), limit))
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"rows in:  {report['rows_in']}\nrows out: {report['rows_out']}")
    click.echo("dropped:  " + (", ".join(f"{k}={v}" for k, v in report["dropped"].items()) or "none"))


@data.command()
@click.option("--in", "in_uri", required=True, help="Raw laion-art-schema dataset URI.")
@click.option("--out", required=True, help="Output folder or s3:// prefix for latent shards.")
@click.option("--resolution", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@base_option
@endpoint_option
@address_option
def encode(in_uri, out, resolution, actors, device, base, endpoint_url, address):
    """Write VAE latents + text-encoder states once, for many training runs."""
    from maskunet_platform.config.data import DataSection
    from maskunet_platform.data.pipeline import write_encoded
    from maskunet_platform.data.stats import read_drop_counts

    cfg = _config(DataSection, source=in_uri, resolution=resolution, encode=True, encode_actors=actors,
                  encode_device=device, s3_endpoint_url=endpoint_url)
    _ensure_ray(address)
    paths = _run(lambda: write_encoded(cfg, _ensure_base(base), out, counter_name="maskunet-encode"))
    counts = read_drop_counts("maskunet-encode")
    click.echo(f"wrote {counts['rows_out']} encoded rows in {len(paths)} shards to {out}; "
               f"dropped {counts['dropped'] or 'none'}")


def _config(section_cls, **values):
    from pydantic import ValidationError

    try:
        return section_cls(**values)
    except ValidationError as e:
        raise click.UsageError("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))


def _run(fn):
    # Bad data / schema problems become one clear CLI error instead of a traceback.
    from maskunet_platform.data.reader import SchemaError
    from maskunet_platform.data.uri import DataSourceError

    try:
        return fn()
    except (SchemaError, DataSourceError) as e:
        raise click.ClickException(str(e)) from None
