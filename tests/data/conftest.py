import pyarrow.parquet as pq
import pytest

from tests.data.badrows import bad_rows_table


@pytest.fixture(scope="session")
def sample_dir(sample_data) -> str:
    return sample_data(rows=24, shards=2, seed=3)


@pytest.fixture(scope="session")
def bad_rows_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bad") / "bad.parquet"
    pq.write_table(bad_rows_table(), path)
    return str(path)
