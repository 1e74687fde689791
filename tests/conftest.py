import os

import pytest

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.s3", "tests.fixtures.ray_local", "tests.fixtures.mlflow_server"]


@pytest.fixture(scope="session", autouse=True)
def _command_logs_in_a_temp_dir(tmp_path_factory):
    """`maskunet` commands run by tests write their log files here, not to ~/.cache/maskunet/logs."""
    saved = os.environ.get("MASKUNET_LOG_DIR")
    os.environ["MASKUNET_LOG_DIR"] = str(tmp_path_factory.mktemp("command-logs"))
    yield
    if saved is None:
        os.environ.pop("MASKUNET_LOG_DIR", None)
    else:
        os.environ["MASKUNET_LOG_DIR"] = saved
