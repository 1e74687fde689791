"""The local fallback: one `mlflow server` process group on 127.0.0.1 (sqlite + local artifacts).

Its pid, process group, port and folders are recorded in `<state dir>/stack.json`, so `down`
stops exactly that process group (never anything found by name) and `status` can tell a
running stack from a stale record (process gone, or another process on the port)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

STATE_FILE = "stack.json"


def state_dir(explicit: Optional[str] = None) -> Path:
    return Path(explicit or os.environ.get("MASKUNET_INFRA_DIR") or "~/.cache/maskunet/infra").expanduser()


def read_state(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pick_port(port: int) -> int:
    """`port` if it is free on 127.0.0.1 (0: any free port); a busy port is an error."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise PortBusy(f"--port {port}: already in use on 127.0.0.1 (--port 0 picks a free one)") from None
        return s.getsockname()[1]


class PortBusy(ValueError):
    pass


def start(root: Path, port: int, timeout_s: float = 180) -> dict:
    """Start the server in its own session (process group); returns the recorded state."""
    root.mkdir(parents=True, exist_ok=True)
    port = pick_port(port)
    artifacts, log = root / "artifacts", root / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(artifacts),
           "--workers", "1"]
    # Job execution off: it would start ~7 worker processes; the tracking URI of the shell
    # must not point the server at itself.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    state = {"mode": "local", "pid": proc.pid, "pgid": proc.pid, "port": port,
             "tracking_uri": f"http://127.0.0.1:{port}", "backend_store": f"sqlite:///{root / 'mlflow.db'}",
             "artifacts": str(artifacts), "log": str(log), "started_at": time.time()}
    (root / STATE_FILE).write_text(json.dumps(state, indent=2))
    _wait_healthy(state, proc, log, timeout_s)
    return state


def _wait_healthy(state: dict, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}; its log {log} ends: {tail}")
        if healthy(state["tracking_uri"], timeout=1):
            return
        time.sleep(0.3)
    stop(state)
    raise RuntimeError(f"mlflow server did not answer at {state['tracking_uri']} within {timeout_s:.0f}s (log: {log})")


def stop(state: dict, grace_s: float = 10) -> bool:
    """Stop the recorded process group; False if it was already gone."""
    return stop_group(int(state["pgid"]), grace_s)


def stop_group(pgid: int, grace_s: float = 10) -> bool:
    """SIGTERM a process group, SIGKILL what lingers; False if it was already gone."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    _reap(pgid)
    return True


def _reap(pid: int) -> None:
    """When this process started the server (tests, one Python session), collect its exit."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
