import pyarrow.parquet as pq
import pytest

from tests.data.badrows import bad_rows_table


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    from maskunet_platform.data.sample import write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(str(out), rows=24, shards=2, seed=3)
    return str(out)


@pytest.fixture(scope="session")
def bad_rows_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bad") / "bad.parquet"
    pq.write_table(bad_rows_table(), path)
    return str(path)
