"""Sample generator, schema checks, URI resolution and the config section (no Ray)."""
import io
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from maskunet.tiny import CAPTION_WORDS
from maskunet_platform.config.data import DataSection
from maskunet_platform.data.pipeline import build_dataset
from maskunet_platform.data.reader import SchemaError, inspect_source
from maskunet_platform.data.sample import COLOURS, ROWS, COLS, sample_table, write_sample
from maskunet_platform.data.uri import DataSourceError, list_parquet_files, resolve_source

PHRASE = re.compile(r"a (small|large) (\w+) (\w+) (?:at the|in the) ([a-z ]+?)(?= and | on a )")


def _cell(where: str) -> tuple[int, int]:
    words = where.split()
    row = next((ROWS.index(w) for w in words if w in ROWS), 1)
    col = next((COLS.index(w) for w in words if w in COLS), 1)
    return row, col


def test_sample_has_laion_art_schema_and_true_captions(tmp_path):
    paths = write_sample(str(tmp_path), rows=40, shards=3, seed=7)
    assert len(paths) == 3
    table = pq.read_table(str(tmp_path))
    assert table.num_rows == 40
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert table.schema.field("text").type == pa.string()
    assert table.schema.field("aesthetic").type == pa.float64()
    formats = {Image.open(io.BytesIO(r["bytes"])).format for r in table.column("image").to_pylist()}
    assert formats == {"PNG", "JPEG"}
    # Same seed -> same rows; different seed -> different rows.
    assert sample_table(5, seed=7).equals(sample_table(5, seed=7))
    assert not sample_table(5, seed=7).equals(sample_table(5, seed=8))
    for image, caption in zip(table.column("image").to_pylist(), table.column("text").to_pylist()):
        assert set(caption.split()) <= set(CAPTION_WORDS), caption
        img = np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("RGB"), dtype=int)
        side = img.shape[0]
        background = caption.rsplit(" on a ", 1)[1].split()[0]
        assert np.abs(img[1, 1] - COLOURS[background]).max() < 30, caption
        for size, colour, kind, where in PHRASE.findall(caption):
            row, col = _cell(where)
            cy, cx = int((row + 0.5) * side / 3), int((col + 0.5) * side / 3)
            if kind != "ring":  # a ring's centre is background
                assert np.abs(img[cy, cx] - COLOURS[colour]).max() < 30, caption


def test_wrong_schema_fails_before_reading_with_every_problem_named(tmp_path):
    bad = pa.table({"image": ["not bytes"], "caption": ["x"]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SchemaError) as err:
        build_dataset(DataSection(source=str(tmp_path)), base="unused")
    msg = str(err.value)
    assert "image column 'image' has type string" in msg and "missing caption column 'text'" in msg
    # Configurable column names, and a filter that needs a column that is absent.
    good = pa.table({"img": [b"\x00"], "caption": ["x"]})
    pq.write_table(good, tmp_path / "good.parquet")
    assert inspect_source(str(tmp_path / "good.parquet"), "img", "caption").kind == "raw"
    with pytest.raises(SchemaError, match="missing aesthetic column 'aesthetic'"):
        inspect_source(str(tmp_path / "good.parquet"), "img", "caption", aesthetic_column="aesthetic")


def test_local_uris_files_folders_globs_and_errors(tmp_path):
    write_sample(str(tmp_path / "d"), rows=4, shards=2)
    (tmp_path / "d" / "_SUCCESS").write_text("")
    folder = list_parquet_files(resolve_source(str(tmp_path / "d")))
    assert [p.rsplit("/", 1)[1] for p in folder] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert list_parquet_files(resolve_source(str(tmp_path / "d" / "*1-of*.parquet"))) == folder[1:]
    assert list_parquet_files(resolve_source(folder[0])) == folder[:1]
    with pytest.raises(DataSourceError, match="does not exist"):
        list_parquet_files(resolve_source(str(tmp_path / "missing")))
    with pytest.raises(DataSourceError, match="no .parquet files"):
        list_parquet_files(resolve_source(str(tmp_path / "d" / "*.csv")))
    with pytest.raises(DataSourceError, match="unsupported scheme"):
        resolve_source("gs://bucket/x")


def test_hf_and_s3_uris_resolve_offline():
    from huggingface_hub import HfFileSystem

    src = resolve_source("hf://datasets/fantasyfish/laion-art/data")
    assert src.scheme == "hf" and src.path == "datasets/fantasyfish/laion-art/data"
    assert isinstance(src.filesystem, pafs.PyFileSystem)
    assert isinstance(src.filesystem.handler.fs, HfFileSystem)
    assert resolve_source("hf://datasets/o/n@main/data/*.parquet").path == "datasets/o/n@main/data/*.parquet"
    with pytest.raises(DataSourceError, match="hf://datasets/<owner>/<name>"):
        resolve_source("hf://fantasyfish/laion-art")
    s3 = resolve_source("s3://bucket/laion/", endpoint_url="http://127.0.0.1:9")
    assert s3.scheme == "s3" and s3.path == "bucket/laion"
    assert isinstance(s3.filesystem, pafs.S3FileSystem)
    assert s3.filesystem.region == "us-east-1"


def test_data_section_validates():
    cfg = DataSection()
    assert (cfg.resolution, cfg.crop, cfg.flip, cfg.min_side, cfg.min_aesthetic, cfg.encode) == (
        64, "center", False, None, None, False)
    with pytest.raises(ValidationError, match="multiple of 8"):
        DataSection(resolution=60)
    with pytest.raises(ValidationError, match="crop"):
        DataSection(crop="corner")
    with pytest.raises(ValidationError, match="extra"):
        DataSection(sauce="s3://x")


def test_a_folder_of_hub_splits_lists_only_its_train_files(tmp_path, caplog):
    # The laion-art Hub layout: data/train-0000k-of-00003.parquet next to data/test-*.parquet.
    train = write_sample(str(tmp_path / "data"), rows=6, shards=3)
    for k in range(2):
        pq.write_table(sample_table(2, seed=9, start=k * 2), tmp_path / "data" / f"test-{k:05d}-of-00002.parquet")
    with caplog.at_level(logging.INFO, logger="maskunet.data"):
        listed = list_parquet_files(resolve_source(str(tmp_path / "data")))
    assert listed == sorted(train)
    assert "reading only its 3 train files, not 2 others" in caplog.text and "train, test" in caplog.text
    explicit = list_parquet_files(resolve_source(str(tmp_path / "data" / "test-*.parquet")))  # a glob is as named
    assert [p.rsplit("/", 1)[1] for p in explicit] == ["test-00000-of-00002.parquet", "test-00001-of-00002.parquet"]
    assert list_parquet_files(resolve_source(str(tmp_path / "data" / "train-*.parquet"))) == listed
    # Split folders (train/, validation/) work the same; a folder without splits is read whole.
    for split in ("train", "validation"):
        write_sample(str(tmp_path / "dirs" / split), rows=2, shards=1)
    assert [p.split("/")[-2] for p in list_parquet_files(resolve_source(str(tmp_path / "dirs")))] == ["train"]
    for name in ("part-0.parquet", "trainer.parquet"):  # "trainer" is not a split name
        pq.write_table(sample_table(2, seed=1), tmp_path / name)
        shutil.copy(tmp_path / name, tmp_path / "dirs" / name)
    assert len(list_parquet_files(resolve_source(str(tmp_path / "dirs")))) == 1  # other files: not train
    (tmp_path / "plain").mkdir()
    for name in ("part-0.parquet", "trainer.parquet"):
        shutil.move(tmp_path / name, tmp_path / "plain" / name)
    assert len(list_parquet_files(resolve_source(str(tmp_path / "plain")))) == 2


def test_sd15_job_reads_only_the_train_shards_of_laion_art():
    from maskunet_platform.config.job import load_job

    job = load_job(Path(__file__).parents[2] / "jobs" / "sd15-laion-art.yaml")
    assert job.data.source == "hf://datasets/fantasyfish/laion-art/data/train-*.parquet"
    assert resolve_source(job.data.source).path.endswith("/data/train-*.parquet")
