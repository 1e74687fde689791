"""`maskunet infra up | status | down` where containers cannot run (no Docker daemon here, as
on most CI machines): an MLflow server on 127.0.0.1 with sqlite, recorded in the state dir,
stopped by its process group."""
import json
import os
import urllib.request

import psutil
import pytest

from tests.fixtures.cli import assert_plain_console, maskunet_env, run_maskunet, summary_value

pytestmark = pytest.mark.slow


def test_local_stack_up_status_down(tmp_path):
    env = maskunet_env(MASKUNET_INFRA_DIR=str(tmp_path / "stack"))
    up = run_maskunet(["infra", "up", "--mode", "local", "--port", "0", "--json"], env, timeout=300)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        assert state["running"] and state["mode"] == "local" and state["tracking_uri"].startswith("http://127.0.0.1:")
        assert state["backend_store"].startswith("sqlite:///")
        with urllib.request.urlopen(f"{state['tracking_uri']}/health", timeout=5) as response:
            assert response.status == 200
        status = run_maskunet(["infra", "status"], env, timeout=120)
        assert status.returncode == 0 and status.stdout.startswith("maskunet infra: running"), status.stdout
        assert summary_value(status.stdout, "tracking URI") == state["tracking_uri"]
        assert_plain_console(status)
        again = run_maskunet(["infra", "up", "--mode", "local", "--port", "0", "--json"], env, timeout=120)
        assert json.loads(again.stdout)["pid"] == state["pid"]  # reported, not started twice
    finally:
        down = run_maskunet(["infra", "down"], env, timeout=120)
    assert down.returncode == 0 and "MLflow server stopped" in down.stdout, down.stdout + down.stderr
    assert not _group_alive(state["pgid"])
    after = json.loads(run_maskunet(["infra", "status", "--json"], env, timeout=120).stdout)
    assert after["running"] is False and (tmp_path / "stack" / "mlflow.db").is_file()  # data kept


def test_compose_mode_without_docker_is_invalid_input(tmp_path):
    from maskunet_platform.infra import compose
    from maskunet_platform.infra.stack import StackError, choose_mode

    usable, why = compose.available()
    if usable:
        pytest.skip("Docker with compose is available here")
    with pytest.raises(StackError, match="--mode compose"):
        choose_mode("compose")
    assert choose_mode("auto")[0] == "local" and why


def _group_alive(pgid: int) -> bool:
    return any(_pgid(p) == pgid for p in psutil.process_iter())


def _pgid(process) -> int:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return -1
