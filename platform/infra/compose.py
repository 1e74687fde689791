"""The containerised stack: `docker compose` over infra/compose.yaml (Postgres, MinIO, MLflow)."""
import json
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "infra" / "compose.yaml"
ENV_FILE = REPO / "infra" / ".env"
PROJECT = "maskunet"


def available() -> tuple[bool, str]:
    """(usable, why not): the docker CLI, its compose plugin and a reachable daemon."""
    if shutil.which("docker") is None:
        return False, "no docker CLI"
    if _run(["docker", "compose", "version"], 20).returncode != 0:
        return False, "docker has no compose plugin"
    if _run(["docker", "info", "--format", "{{.ServerVersion}}"], 20).returncode != 0:
        return False, "no Docker daemon reachable"
    return True, ""


def _base() -> list[str]:
    cmd = ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE)]
    return cmd + (["--env-file", str(ENV_FILE)] if ENV_FILE.exists() else [])


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


def up(timeout_s: float = 600) -> dict:
    result = _run([*_base(), "up", "-d", "--wait"], timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"docker compose up failed: {result.stderr.strip()[-600:]}")
    return status()


def down() -> bool:
    result = _run([*_base(), "down"], 300)
    if result.returncode != 0:
        raise RuntimeError(f"docker compose down failed: {result.stderr.strip()[-600:]}")
    return True


def status() -> dict:
    result = _run([*_base(), "ps", "--format", "json"], 60)
    services = []
    for line in result.stdout.splitlines():  # one JSON object per line (compose v2.21+)
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        services.append({"service": item.get("Service"), "state": item.get("State"), "health": item.get("Health")})
    running = bool(services) and all(s["state"] == "running" for s in services)
    return {"mode": "compose", "running": running, "services": services, "compose_file": str(COMPOSE_FILE),
            "tracking_uri": "http://127.0.0.1:5000" if running else None}
