"""The Ray job server, through Ray's own `JobSubmissionClient`.

Token auth: the token comes from the environment only (`RAY_AUTH_TOKEN`, or the file named by
`RAY_AUTH_TOKEN_PATH`) and travels as an `Authorization: Bearer` header; it is never printed,
logged or put into a runtime env. With `RAY_AUTH_MODE=disabled` no header is sent; with no
token in the environment Ray's SDK applies its own rules (`~/.ray/auth_token` when token auth
is on)."""
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobServerError(RuntimeError):
    """The job server could not be reached or refused the request (auth, unknown job)."""


class AddressError(ValueError):
    """An address that is not a job server's HTTP address."""


def job_server_address(address: Optional[str]) -> str:
    """`http(s)://HOST:PORT`; a bare HOST:PORT gets http://. Ray Client / GCS addresses are not
    the job server (it is the dashboard's port, 8265 by default)."""
    address = (address or DEFAULT_ADDRESS).strip().rstrip("/")
    if address.startswith("ray://") or address == "auto":
        raise AddressError(f"--address {address}: the job server's HTTP address is needed, "
                           "e.g. http://HEAD:8265 (the dashboard port), not a Ray Client or GCS address")
    return address if "://" in address else f"http://{address}"


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token and environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        if not path.is_file():
            raise AddressError(f"RAY_AUTH_TOKEN_PATH {path} does not exist")
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: Optional[str], environ: Optional[Mapping[str, str]] = None):
    """A JobSubmissionClient for `address` (it checks that the server answers)."""
    from ray.job_submission import JobSubmissionClient

    environ = os.environ if environ is None else environ
    url = job_server_address(address)
    try:
        return JobSubmissionClient(url, headers=auth_headers(environ))
    except Exception as e:  # noqa: BLE001 - connection errors come as several types
        raise JobServerError(f"cannot use the Ray job server at {url}: {_short(e)}") from None


def call(what: str, fn, *args, **kwargs):
    """A client call whose failure is one line (Ray's messages span many)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise JobServerError(f"{what}: {_short(e)}") from None


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:400]


@dataclass
class Follow:
    """Polls a job's status and new log text until it ends (or `timeout_s`)."""

    client: object
    job_id: str
    on_text: Callable[[str], None]
    poll_s: float = 1.0
    timeout_s: Optional[float] = None
    printed: int = 0

    def run(self) -> str:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            status = str(call("job status", self.client.get_job_status, self.job_id).value)
            self._new_text()
            if status in TERMINAL:
                return status
            if deadline is not None and time.monotonic() > deadline:
                return status
            time.sleep(self.poll_s)

    def _new_text(self) -> None:
        logs = call("job logs", self.client.get_job_logs, self.job_id)
        if len(logs) > self.printed:
            self.on_text(logs[self.printed:])
            self.printed = len(logs)


def wait_for_status(client, job_id: str, statuses: tuple[str, ...], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = str(call("job status", client.get_job_status, job_id).value)
        if status in statuses:
            return status
        time.sleep(0.5)
    return status


def job_record(info) -> dict:
    """The fields a user asks about, JSON-ready (JobDetails / JobInfo)."""
    def seconds(ms):
        return ms / 1000 if ms else None

    job_id = getattr(info, "submission_id", None) or getattr(info, "job_id", None)
    start, end = seconds(info.start_time), seconds(info.end_time)
    return {"id": job_id, "status": str(info.status.value), "entrypoint": info.entrypoint,
            "message": info.message, "start_time": start, "end_time": end,
            "duration_s": round((end or time.time()) - start, 1) if start else None,
            "metadata": dict(info.metadata or {}), "driver_exit_code": getattr(info, "driver_exit_code", None)}
