import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskunet_platform.data.sample import sample_table
from tests.data.badrows import bad_rows_table

ID_FILES, ID_ROWS, ID_ROW_GROUP = 3, 64, 32


@pytest.fixture(scope="session")
def sample_dir(sample_data) -> str:
    return sample_data(rows=24, shards=2, seed=3)


@pytest.fixture(scope="session")
def bad_rows_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bad") / "bad.parquet"
    pq.write_table(bad_rows_table(), path)
    return str(path)


@pytest.fixture(scope="session")
def id_dir(tmp_path_factory) -> str:
    """laion-art-schema shards plus an `id` column (file k, row i -> k * ID_ROWS + i), 32-row row groups."""
    folder = tmp_path_factory.mktemp("ids")
    for k in range(ID_FILES):
        table = sample_table(ID_ROWS, seed=11, start=k * ID_ROWS, image_size=24)
        table = table.append_column("id", pa.array(range(k * ID_ROWS, (k + 1) * ID_ROWS), pa.int64()))
        pq.write_table(table, folder / f"train-{k:05d}-of-{ID_FILES:05d}.parquet", row_group_size=ID_ROW_GROUP)
    return str(folder)
