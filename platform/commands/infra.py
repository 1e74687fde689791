"""`maskunet infra up|down|status`: the team stack, or its local stand-in (platform/infra/)."""
import click

from maskunet_platform.console.errors import InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary

state_option = click.option("--state-dir", default=None, metavar="DIR",
                            help="Where the stack's record and local data live "
                                 "(default $MASKUNET_INFRA_DIR, else ~/.cache/maskunet/infra).")


@click.group()
def infra() -> None:
    """The tracking + storage stack: MLflow on Postgres with an S3 object store (infra/compose.yaml),
    or an MLflow server on 127.0.0.1 with sqlite where containers cannot run."""


@infra.command("up")
@state_option
@click.option("--mode", type=click.Choice(["auto", "compose", "local"]), default="auto", show_default=True,
              help="compose: Docker Compose; local: MLflow server with sqlite; auto: compose when Docker runs.")
@click.option("--port", default=5000, show_default=True, help="Local MLflow port (0: a free one).")
@console_command("infra up")
def up(session: Session, state_dir, mode, port) -> None:
    """Start the stack (a running one is reported, not started twice)."""
    from maskunet_platform.infra.stack import StackError, resolve_root, up as stack_up

    root = resolve_root(state_dir)
    try:
        with session.progress.stage("start stack"):
            state, what = stack_up(root, mode, port)
    except StackError as e:
        raise InvalidInput(str(e)) from None
    session.finish(_summary(f"maskunet infra: {what}", state), next_step=_next(state))


@infra.command("status")
@state_option
@console_command("infra status")
def status(session: Session, state_dir) -> None:
    """Is the stack running, where, and with which stores."""
    from maskunet_platform.infra.stack import resolve_root, status as stack_status

    state = stack_status(resolve_root(state_dir))
    title = "maskunet infra: running" if state["running"] else \
        ("maskunet infra: not running" + (" (stale record: the server is gone)" if state.get("mode") else ""))
    session.finish(_summary(title, state), next_step=None if state["running"] else "maskunet infra up")


@infra.command("down")
@state_option
@console_command("infra down")
def down(session: Session, state_dir) -> None:
    """Stop the stack's processes (its process group, or the compose services); data is kept."""
    from maskunet_platform.infra.stack import down as stack_down, resolve_root

    with session.progress.stage("stop stack"):
        state, what = stack_down(resolve_root(state_dir))
    session.finish(_summary(f"maskunet infra: {what}", {**state, "stopped": what}))


def _summary(title: str, state: dict) -> Summary:
    summary = Summary(title, data=state, show_timings=False, show_log=False)
    summary.add("mode:", state.get("mode"))
    summary.add("tracking URI:", state.get("tracking_uri"))
    summary.add("backend store:", state.get("backend_store"))
    summary.add("artifacts:", state.get("artifacts"))
    summary.add("pid:", state.get("pid") if state.get("running") else None)
    for s in state.get("services") or []:
        summary.add(f"{s['service']}:", f"{s['state']} {s.get('health') or ''}")
    summary.add("server log:", state.get("log"))
    summary.add("state dir:", state.get("state_dir"))
    return summary


def _next(state: dict):
    uri = state.get("tracking_uri")
    return f"export MLFLOW_TRACKING_URI={uri}" if uri else None
