"""`maskunet ui`: the MLflow UI on 127.0.0.1 over the embedded store (or MLFLOW_TRACKING_URI)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import click

from maskunet_platform.config.tracking import TrackingSection
from maskunet_platform.console.errors import InvalidInput, RunFailure
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.infra.local_stack import PortBusy, healthy, pick_port, stop_group

DEFAULT_PORT = 5000
DEFAULT_STORE = TrackingSection().local_store


def store_uri(store: Optional[str]) -> str:
    """--store (a local store folder or a database URI), else MLFLOW_TRACKING_URI, else the
    embedded default store."""
    if store and "://" in store:
        return store
    if not store and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = Path(store or DEFAULT_STORE).expanduser().resolve()
    if not (folder / "mlflow.db").exists():
        raise InvalidInput(f"no MLflow store at {folder} (no mlflow.db): run `maskunet train` first, "
                           "or pass --store")
    return f"sqlite:///{folder / 'mlflow.db'}"


def ui_hint(tracking_uri: str, local_store: str, experiment_id: Optional[str], run_id: Optional[str]) -> str:
    """The one command (or URL) to look at a run in MLflow."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id and run_id else ""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri.rstrip('/')}/{page}"
    default_db = Path(DEFAULT_STORE).expanduser().resolve() / "mlflow.db"
    if tracking_uri == f"sqlite:///{default_db}":
        command = "maskunet ui"
    elif tracking_uri.startswith("sqlite:///") and tracking_uri.endswith("/mlflow.db"):
        command = f"maskunet ui --store {Path(tracking_uri[len('sqlite:///'):]).parent}"
    else:
        command = f"maskunet ui --store {tracking_uri}"
    return f"{command}   (then http://127.0.0.1:{DEFAULT_PORT}/{page})"


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--store", default=None,
              help="Local store folder (holding mlflow.db) or a database URI; default: MLFLOW_TRACKING_URI, "
                   f"else {DEFAULT_STORE}.")
@console_command("ui", results=False)
def ui(session: Session, port: int, store: Optional[str]) -> None:
    """Serve the MLflow UI on 127.0.0.1 until interrupted (Ctrl-C)."""
    uri = store_uri(store)
    if uri.startswith(("http://", "https://")):
        session.out.write(f"MLflow is already served at {uri}\n")
        return
    try:
        pick_port(port)
    except PortBusy:
        raise InvalidInput(f"--port {port}: already in use on 127.0.0.1") from None
    server = _start_server(uri, port, session)
    url = f"http://127.0.0.1:{port}"
    try:
        with session.progress.stage("start the MLflow UI"):
            _wait_until_up(server, url, session)
        session.out.write(f"MLflow UI: {url}   (store {uri}; Ctrl-C to stop)\n")
        session.out.flush()
        _wait(server, session)
    finally:
        stop_group(server.pid)


def _start_server(uri: str, port: int, session: Session) -> subprocess.Popen:
    """`mlflow ui` in its own process group (it forks workers), its output in the log file."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", uri, "--workers", "1"]
    if uri.startswith("sqlite:///"):  # artifacts of runs created in the UI: next to the db, not in the cwd
        cmd += ["--artifacts-destination", str(Path(uri[len("sqlite:///"):]).parent / "artifacts")]
    return subprocess.Popen(cmd, stdout=session.log.stream, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait_until_up(server: subprocess.Popen, url: str, session: Session, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RunFailure(f"the MLflow UI exited with code {server.returncode} (see {session.log.path})")
        if healthy(url, timeout=1):
            return
        time.sleep(0.3)
    raise RunFailure(f"the MLflow UI did not answer at {url} within {timeout:.0f}s (see {session.log.path})")


def _wait(server: subprocess.Popen, session: Session) -> None:
    """Until the server exits or this process is interrupted (Ctrl-C) or terminated. Both
    handlers are set here: a process started in the background by a shell inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt for it."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.wait()
    except KeyboardInterrupt:
        session.out.write("stopping the MLflow UI\n")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
