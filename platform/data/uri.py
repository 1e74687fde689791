"""Dataset URIs -> (pyarrow filesystem, path): local paths/globs, s3://, hf://.

- local: a parquet file, a folder (searched recursively) or a glob (`data/*.parquet`).
- A folder laid out in Hugging Face splits (`train-00000-of-00024.parquet` next to
  `test-*.parquet`, or `train/` next to `test/`) yields only its train files, so test
  shards never leak into training; name the files with a glob to choose others.
- `s3://bucket/prefix`: pyarrow's native S3 client. An S3-compatible endpoint (MinIO,
  moto) comes from the `endpoint_url` argument (the data config's `s3_endpoint_url`) or
  `AWS_ENDPOINT_URL`; credentials found in the driver's environment are put into the
  filesystem object, so Ray workers started before they were set still authenticate.
- `hf://datasets/<owner>/<name>[@rev]/<path>`: huggingface_hub's `HfFileSystem`, wrapped
  for pyarrow (what Ray recommends over `from_huggingface`). `HF_TOKEN` is honoured.

Resolution never touches the network; listing (`list_parquet_files`) does.
"""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from maskunet_platform.data.retry import RetryPolicy, call_with_retries

GLOB_CHARS = "*?["
# Hugging Face's split keywords (`datasets` data-files patterns): a file belongs to a split
# when its name or one of its folders below the listed root starts with one of them.
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
SPLIT_PART = re.compile(r"^([a-z]+)(?:$|[-._ 0-9])")
log = logging.getLogger("maskunet.data")


class DataSourceError(ValueError):
    """A data URI that cannot be read; the message names the URI and the problem."""


@dataclass
class ResolvedSource:
    uri: str
    scheme: str  # "local" | "s3" | "hf"
    filesystem: pafs.FileSystem
    path: str  # path inside the filesystem (may contain glob characters)


def s3_filesystem(endpoint_url: str | None = None) -> pafs.S3FileSystem:
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        # Without a region pyarrow asks AWS where the bucket lives; a custom endpoint can't say.
        kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def hf_filesystem() -> pafs.FileSystem:
    from huggingface_hub import HfFileSystem

    return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem()))


def resolve_source(uri: str, endpoint_url: str | None = None) -> ResolvedSource:
    """Pick the filesystem for `uri` without any I/O."""
    if not uri or not uri.strip():
        raise DataSourceError("data source URI is empty")
    if uri.startswith("s3://"):
        path = uri[len("s3://"):].strip("/")
        if not path:
            raise DataSourceError(f"{uri!r}: an s3 URI needs a bucket (s3://bucket/prefix)")
        return ResolvedSource(uri, "s3", s3_filesystem(endpoint_url), path)
    if uri.startswith("hf://"):
        path = uri[len("hf://"):].strip("/")
        parts = path.split("/")
        if len(parts) < 3 or parts[0] not in ("datasets", "spaces"):
            raise DataSourceError(
                f"{uri!r}: expected hf://datasets/<owner>/<name>[/path], e.g. "
                "hf://datasets/fantasyfish/laion-art/data")
        return ResolvedSource(uri, "hf", hf_filesystem(), path)
    if "://" in uri and not uri.startswith("file://"):
        raise DataSourceError(f"{uri!r}: unsupported scheme (use a local path, s3:// or hf://)")
    local = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return ResolvedSource(uri, "local", pafs.LocalFileSystem(), local)


def resolve_output(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for writing shards (local folder or s3:// prefix)."""
    src = resolve_source(uri, endpoint_url)
    if src.scheme == "hf":
        raise DataSourceError(f"{uri!r}: writing to the Hugging Face Hub is not supported")
    if any(c in src.path for c in GLOB_CHARS):
        raise DataSourceError(f"{uri!r}: an output location cannot contain glob characters")
    return src.filesystem, src.path


def _glob_remote(src: ResolvedSource, retry: RetryPolicy) -> list[str]:
    # List below the longest glob-free folder and match the pattern there.
    head = []
    for part in src.path.split("/"):
        if any(c in part for c in GLOB_CHARS):
            break
        head.append(part)
    selector = pafs.FileSelector("/".join(head), recursive=True)
    infos = call_with_retries(lambda: src.filesystem.get_file_info(selector), "listing the data source", retry)
    return [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, src.path)]


def split_of(path: str, root: str) -> str | None:
    """The Hugging Face split ("train", "validation", "test") `path` belongs to, or None."""
    rel = path[len(root):].lstrip("/") if path.startswith(root) else Path(path).name
    for part in rel.lower().split("/"):
        m = SPLIT_PART.match(part)
        for split, words in SPLIT_KEYWORDS.items():
            if m and m.group(1) in words:
                return split
    return None


def train_files_only(files: list[str], src: ResolvedSource) -> list[str]:
    """Only the train files when a listed folder holds several Hugging Face splits."""
    splits = {f: split_of(f, src.path) for f in files}
    found = set(splits.values())
    if "train" not in found or len(found) < 2:
        return files
    train = [f for f in files if splits[f] == "train"]
    others = sorted(str(s) for s in found - {"train"})
    log.info("data: %s holds split files (%s); reading only its %d train files, not %d others "
             "(name files with a glob to choose)", src.uri, ", ".join(["train", *others]), len(train),
             len(files) - len(train))
    return train


def list_parquet_files(src: ResolvedSource, retry: RetryPolicy = RetryPolicy()) -> list[str]:
    """All parquet files `src` names, sorted; a clear error when there are none.

    A folder is listed recursively, keeping only its train files when it holds several
    Hugging Face splits (`train_files_only`); a glob or a file is taken as named.
    """
    if any(c in src.path for c in GLOB_CHARS):
        if src.scheme == "local":
            files = [p for p in glob.glob(src.path, recursive=True) if os.path.isfile(p)]
        else:
            files = _glob_remote(src, retry)
    else:
        try:
            info = call_with_retries(lambda: src.filesystem.get_file_info(src.path), "listing the data source", retry)
        except OSError as e:  # e.g. the bucket does not exist
            raise DataSourceError(f"{src.uri!r}: cannot be read ({e})") from None
        if info.type == pafs.FileType.NotFound:
            raise DataSourceError(f"{src.uri!r} does not exist")
        if info.is_file:
            return [src.path]
        selector = pafs.FileSelector(src.path, recursive=True)
        infos = call_with_retries(lambda: src.filesystem.get_file_info(selector), "listing the data source", retry)
        files = [i.path for i in infos if i.is_file]
        files = train_files_only(_parquet(files), src)
    files = _parquet(files)
    if not files:
        raise DataSourceError(f"{src.uri!r}: no .parquet files found")
    return files


def _parquet(files: list[str]) -> list[str]:
    return sorted(f for f in files if f.endswith(".parquet") and not Path(f).name.startswith((".", "_")))
