"""`maskunet infra up|down|status`: pick the stack (compose when containers can run, else the
local MLflow server) and report it the same way."""
from pathlib import Path
from typing import Optional

from maskunet_platform.infra import compose, local_stack


class StackError(ValueError):
    """A request that cannot be met (e.g. --mode compose without a Docker daemon)."""


def choose_mode(mode: str) -> tuple[str, str]:
    """(mode, why) for `auto`, `compose` or `local`."""
    if mode == "local":
        return "local", "asked for"
    usable, why_not = compose.available()
    if mode == "compose" and not usable:
        raise StackError(f"--mode compose: {why_not}; use --mode local (MLflow on sqlite)")
    if usable:
        return "compose", "Docker is available"
    return "local", f"{why_not}: MLflow server on 127.0.0.1 with sqlite"


def status(root: Path) -> dict:
    """What runs now, from the state record (checked against the process and the server)."""
    state = local_stack.read_state(root)
    if state is None:
        return {"mode": None, "running": False, "state_dir": str(root)}
    if state.get("mode") == "compose":
        return {**compose.status(), "state_dir": str(root)}
    alive = local_stack.alive(int(state["pid"]))
    answering = alive and local_stack.healthy(state["tracking_uri"])
    return {**state, "running": answering, "process_alive": alive, "state_dir": str(root)}


def up(root: Path, mode: str, port: int) -> tuple[dict, str]:
    """(status, what happened); an already running stack is reported, not started twice."""
    current = status(root)
    if current["running"]:
        return current, "already running"
    chosen, why = choose_mode(mode)
    if chosen == "compose":
        root.mkdir(parents=True, exist_ok=True)
        (root / local_stack.STATE_FILE).write_text('{"mode": "compose"}')
        compose.up()
        return status(root), f"started with docker compose ({why})"
    try:
        local_stack.start(root, port)
    except local_stack.PortBusy as e:
        raise StackError(str(e)) from None
    return status(root), f"started ({why})"


def down(root: Path) -> tuple[dict, str]:
    state = local_stack.read_state(root)
    if state is None:
        return status(root), "nothing recorded as running"
    if state.get("mode") == "compose":
        compose.down()
        what = "docker compose stack stopped (volumes kept)"
    else:
        stopped = local_stack.stop(state)
        what = "MLflow server stopped (data kept)" if stopped else "the recorded server had already exited"
    (root / local_stack.STATE_FILE).unlink(missing_ok=True)
    return status(root), what


def resolve_root(state_dir: Optional[str]) -> Path:
    return local_stack.state_dir(state_dir)
