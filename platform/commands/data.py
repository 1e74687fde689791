"""`maskunet data sample|inspect|encode`."""
from __future__ import annotations

import os
from pathlib import Path

import click

from maskunet_platform.config.model import ModelSection
from maskunet_platform.console.errors import InvalidInput, MaskunetGroup
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary

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


def _ensure_base(base: str, session: Session) -> str:
    path = Path(base).expanduser()
    if base == DEFAULT_BASE and not path.exists():
        from maskunet.tiny import ensure_tiny_base

        with session.progress.stage(f"install the pretrained shapes base at {path}"):
            ensure_tiny_base(path, pretrained=True)
    return base


def _ensure_ray(address: str | None, session: Session) -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        with session.progress.stage("start Ray"):
            ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)


@click.group(cls=MaskunetGroup)
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
@console_command("data sample")
def sample(session: Session, out, rows, shards, seed, image_size, endpoint_url) -> None:
    """Write synthetic laion-art-schema parquet shards (captions describe the shapes)."""
    from maskunet_platform.data.sample import write_sample

    try:
        with session.progress.stage("write sample data"):
            paths = write_sample(out, rows, shards, seed, image_size, endpoint_url)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    summary = Summary(f"maskunet data sample: wrote {rows} rows in {len(paths)} shards to {out}",
                      data={"out": out, "rows": rows, "shards": len(paths), "files": [str(p) for p in paths]})
    session.finish(summary)


@data.command(name="inspect")
@click.argument("uri")
@click.option("--resolution", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N rows.")
@click.option("--image-column", default="image", show_default=True)
@click.option("--caption-column", default="text", show_default=True)
@base_option
@endpoint_option
@address_option
@console_command("data inspect")
def inspect_cmd(session: Session, uri, resolution, limit, image_column, caption_column, base, endpoint_url, address):
    """Stream URI through the reader and preprocessing; report rows in/out and drops."""
    from maskunet_platform.config.data import DataSection
    from maskunet_platform.data.inspect import inspect_dataset

    cfg = _config(DataSection, source=uri, resolution=resolution, image_column=image_column,
                  caption_column=caption_column, s3_endpoint_url=endpoint_url)
    _check_source(cfg)
    _ensure_ray(address, session)
    base = _ensure_base(base, session)
    rows = session.progress.steps("read + preprocess", limit, unit="rows")
    report = inspect_dataset(cfg, base, limit, on_rows=lambda n, rate: rows.update(n, rows_per_s=rate))
    rows.done()
    summary = Summary(f"maskunet data inspect: {uri}", data=report)
    summary.add("rows in:", report["rows_in"]).add("rows out:", report["rows_out"])
    summary.add("dropped:", ", ".join(f"{k}={v}" for k, v in report["dropped"].items()) or "none")
    session.finish(summary)


@data.command()
@click.option("--in", "in_uri", required=True, help="Raw laion-art-schema dataset URI.")
@click.option("--out", required=True, help="Output folder or s3:// prefix for latent shards.")
@click.option("--resolution", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@base_option
@endpoint_option
@address_option
@console_command("data encode")
def encode(session: Session, in_uri, out, resolution, actors, device, base, endpoint_url, address):
    """Write VAE latents + text-encoder states once, for many training runs."""
    from maskunet_platform.config.data import DataSection
    from maskunet_platform.data.pipeline import write_encoded
    from maskunet_platform.data.stats import read_drop_counts

    cfg = _config(DataSection, source=in_uri, resolution=resolution, encode=True, encode_actors=actors,
                  encode_device=device, s3_endpoint_url=endpoint_url)
    _check_source(cfg)
    _ensure_ray(address, session)
    base = _ensure_base(base, session)
    with session.progress.stage("encode (Ray Data)"):
        paths = write_encoded(cfg, base, out, counter_name="maskunet-encode")
    counts = read_drop_counts("maskunet-encode")
    summary = Summary(f"maskunet data encode: wrote {counts['rows_out']} encoded rows in {len(paths)} shards to {out}",
                      data={"out": out, "rows_out": counts["rows_out"], "shards": len(paths),
                            "dropped": counts["dropped"]})
    summary.add("dropped:", ", ".join(f"{k}={v}" for k, v in counts["dropped"].items()) or "none")
    session.finish(summary)


def _check_source(cfg) -> None:
    """List the source and read its schema before Ray starts: a wrong path fails at once (exit 2)."""
    from maskunet_platform.data.pipeline import open_source

    open_source(cfg)


def _config(section_cls, **values):
    from pydantic import ValidationError

    try:
        return section_cls(**values)
    except ValidationError as e:
        raise InvalidInput("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
