"""`maskunet serve` as a real process: bearer auth, 127.0.0.1 only, and a clean shutdown on
SIGINT / SIGTERM with a summary and no Ray process left behind."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.cli import assert_plain_console, maskunet_env, run_maskunet
from tests.fixtures.services import free_port
from tests.serve.conftest import http, post_json

pytestmark = pytest.mark.slow
TOKEN_ENV = "MASKUNET_TEST_SERVE_TOKEN"
TOKEN = "s3rve-t0ken-never-logged"


def _processes_with(variable: str) -> list[int]:
    """Live processes whose environment holds `variable` (every process the CLI started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _outside_address():
    """This machine's address on its default route, when it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_serve_with_auth_then_sigint_shuts_down_cleanly(shapes_base, mask_dirs):
    port = free_port()
    env = maskunet_env(**{TOKEN_ENV: TOKEN})
    args = [sys.executable, "-m", "maskunet_platform.cli", "serve", "--base", shapes_base, "--masks", mask_dirs["a"],
            "--port", str(port), "--set", f"serve.auth.token_env={TOKEN_ENV}", "--set", "serve.cpus_per_replica=0",
            "--set", "serve.torch_threads=2", "--set", "serve.limits.default_steps=3"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    try:
        _wait_healthy(proc, url)
        assert http(url + "/v1/model").status == 401
        assert http(url + "/v1/model", headers={"Authorization": "Bearer wrong"}).status == 401
        assert http(url + "/").status == 401
        assert post_json(url + "/v1/generate", {"prompt": "a ring"}).status == 401
        assert http(url + "/v1/model", headers=auth).status == 200
        assert post_json(url + "/v1/generate", {"prompt": "a ring", "seed": 1}, headers=auth).status == 200
        outside = _outside_address()
        if outside:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=2).close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "requests served:" in out and "request errors:" in out and "latency:" in out, out
    assert "requests served: 1" in " ".join(out.split()), out
    assert TOKEN not in out + err
    assert_plain_console(subprocess.CompletedProcess(args, 0, out, err))
    leftover = _processes_with(f"RAY_TMPDIR={env['RAY_TMPDIR']}")
    assert not leftover, f"Ray processes left behind: {leftover}"
    logs = Path(os.environ["MASKUNET_LOG_DIR"])
    assert not any(TOKEN in f.read_text(errors="replace") for f in logs.rglob("*") if f.is_file())


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "maskunet serve did not come up"
        try:
            if http(url + "/healthz", timeout=5).status == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)


def test_serve_rejects_bad_input_before_starting_anything(shapes_base):
    env = maskunet_env()
    neither = run_maskunet(["serve"], env, timeout=120)
    assert neither.returncode == 2 and "--base" in neither.stderr and neither.stderr.count("\n") == 1
    missing_token = run_maskunet(["serve", "--base", shapes_base, "--set", "serve.auth.token_env=NO_SUCH_TOKEN_VAR"],
                                 env, timeout=120)
    assert missing_token.returncode == 2 and "serve.auth.token_env" in missing_token.stderr
    bad_field = run_maskunet(["serve", "--base", shapes_base, "--set", "serve.batching.max_batch_size=0"], env,
                             timeout=120)
    assert bad_field.returncode == 2 and "serve.batching.max_batch_size" in bad_field.stderr
