"""`maskunet submit` and `maskunet jobs list|status|logs|stop`: Ray Jobs on a cluster (platform/jobs/)."""
import click

from maskunet_platform.console.errors import Interrupted, InvalidInput, RunFailure
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary

address_option = click.option("--address", envvar="RAY_JOB_ADDRESS", default=None, metavar="URL",
                              help="The Ray job server (dashboard) URL; default $RAY_JOB_ADDRESS, "
                                   "else http://127.0.0.1:8265. Token from $RAY_AUTH_TOKEN(_PATH).")


def _client(address):
    from maskunet_platform.jobs.client import AddressError, JobServerError, connect

    try:
        return connect(address)
    except AddressError as e:
        raise InvalidInput(str(e)) from None
    except JobServerError as e:
        raise RunFailure(str(e)) from None


def _server_call(what, fn, *args, **kwargs):
    from maskunet_platform.jobs.client import JobServerError, call

    try:
        return call(what, fn, *args, **kwargs)
    except JobServerError as e:
        raise RunFailure(str(e)) from None


@click.command()
@click.argument("spec_file", metavar="JOB.yaml")
@click.argument("extra_args", nargs=-1, metavar="[-- ARGS...]")
@click.option("--kind", type=click.Choice(["train", "sweep", "eval"]), default=None,
              help="What the job runs (default: sweep when the spec has tune.search_space, else train).")
@address_option
@click.option("--wait", is_flag=True, help="Follow the job's output until it ends; exit 1 unless it succeeded.")
@click.option("--runtime-env", "runtime_env_file", default=None, metavar="FILE",
              help="Runtime env YAML (e.g. image_uri or a pinned pip list) instead of uploading this repository.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
@click.option("--id", "submission_id", default=None, help="Submission id (default: maskunet-<kind>-<job>-<random>).")
@console_command("submit")
def submit(session: Session, spec_file, extra_args, kind, address, wait, runtime_env_file, overrides,
           submission_id) -> None:
    """Run a job spec on a Ray cluster through its job server: checked here first (exit 2 naming
    the field), then `maskunet KIND -c JOB.yaml --set ...` runs there with this repository as
    its working dir. Settings (MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, ...) are forwarded by
    name; credentials never are (the cluster provides them)."""
    from maskunet_platform.jobs.client import AddressError
    from maskunet_platform.jobs.submit import Request, plan, submit as submit_job

    try:
        planned = plan(Request(spec_file, kind, tuple(overrides), tuple(extra_args), address, runtime_env_file,
                               submission_id))
    except AddressError as e:
        raise InvalidInput(str(e)) from None
    if planned.secrets_held:
        session.warn(f"not forwarded (the cluster must provide them): {', '.join(planned.secrets_held)}")
    with session.progress.stage(f"connect to {planned.address}"):
        client = _client(planned.address)
    with session.progress.stage("upload + submit"):
        job_id = submit_job(planned, client)
    session.line(f"submitted {job_id}: {planned.spec.entrypoint}")
    status = _follow(session, client, job_id) if wait else None
    info = _server_call("job info", client.get_job_info, job_id)
    _finish_submit(session, planned, job_id, info, status)


def _follow(session: Session, client, job_id: str) -> str:
    from maskunet_platform.jobs.client import Follow, JobServerError

    def show(text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            session.progress.line(f"  | {line}")

    try:
        with session.progress.stage(f"job {job_id}"):
            return Follow(client, job_id, show if not session.quiet else (lambda _: None)).run()
    except KeyboardInterrupt:
        raise Interrupted(f"stopped following; job {job_id} keeps running: maskunet jobs logs {job_id} --follow, "
                          f"or maskunet jobs stop {job_id}") from None
    except JobServerError as e:
        raise RunFailure(str(e)) from None


def _finish_submit(session: Session, planned, job_id: str, info, status) -> None:
    from maskunet_platform.jobs.client import job_record

    record = job_record(info)
    data = {**record, "address": planned.address, "kind": planned.spec.kind,
            "runtime_env": planned.describe_env(), "not_forwarded": planned.secrets_held}
    title = f"maskunet submit: job {job_id} {record['status'].lower()}" if status else \
        f"maskunet submit: job {job_id} submitted ({record['status'].lower()})"
    summary = Summary(title, data=data)
    summary.add("job server:", planned.address)
    summary.add("entrypoint:", planned.spec.entrypoint)
    summary.add("runtime env:", ", ".join(f"{k}" for k in planned.describe_env()))
    summary.add("forwarded env:", ", ".join(data["runtime_env"]["env_vars"]))
    summary.add("message:", record["message"] if status and status != "SUCCEEDED" else None)
    session.finish(summary, next_step=f"maskunet jobs logs {job_id} --address {planned.address}" +
                   ("" if status else " --follow"))
    if status and status != "SUCCEEDED":
        raise click.exceptions.Exit(1)


@click.group()
def jobs() -> None:
    """Jobs on a Ray cluster's job server: list, status, logs, stop."""


@jobs.command("list")
@address_option
@console_command("jobs list")
def list_jobs(session: Session, address) -> None:
    """Every job the server knows, newest first."""
    from maskunet_platform.jobs.client import job_record

    client = _client(address)
    records = sorted((job_record(j) for j in _server_call("list jobs", client.list_jobs)),
                     key=lambda r: r["start_time"] or 0, reverse=True)
    summary = Summary(f"maskunet jobs: {len(records)} at {client.get_address()}", data={"jobs": records},
                      show_timings=False, show_log=False)
    for r in records:
        summary.add(f"{r['id']}:", f"{r['status']:<9} {_duration(r)}  {r['entrypoint']}")
    session.finish(summary)


@jobs.command("status")
@click.argument("job_id", metavar="ID")
@address_option
@console_command("jobs status")
def status(session: Session, job_id, address) -> None:
    """One job: status, entrypoint, timings, the server's message."""
    from maskunet_platform.jobs.client import job_record

    record = job_record(_server_call(f"job {job_id}", _client(address).get_job_info, job_id))
    summary = Summary(f"maskunet jobs: {job_id} {record['status']}", data=record, show_timings=False,
                      show_log=False)
    summary.add("entrypoint:", record["entrypoint"])
    summary.add("running for:" if record["end_time"] is None else "ran for:", _duration(record))
    summary.add("message:", record["message"])
    summary.add("driver exit code:", record["driver_exit_code"])
    session.finish(summary)


@jobs.command("logs")
@click.argument("job_id", metavar="ID")
@address_option
@click.option("--follow", is_flag=True, help="Keep printing new output until the job ends.")
@console_command("jobs logs")
def logs(session: Session, job_id, address, follow) -> None:
    """The job's driver output (the job's own console lines)."""
    from maskunet_platform.jobs.client import Follow

    client = _client(address)
    if not follow:
        text = _server_call(f"logs of {job_id}", client.get_job_logs, job_id)
        if session.as_json:
            session.finish(Summary("", data={"id": job_id, "logs": text}))
        else:  # the text itself and nothing else, so it pipes like a file
            session.out.write(text if text.endswith("\n") or not text else text + "\n")
            session.out.flush()
        return
    written = []
    status = Follow(client, job_id, lambda t: (written.append(t), None if session.as_json else session.out.write(t)),
                    timeout_s=None).run()
    session.finish(Summary(f"job {job_id} {status}", data={"id": job_id, "status": status, "logs": "".join(written)},
                           show_timings=False, show_log=False))


@jobs.command("stop")
@click.argument("job_id", metavar="ID")
@address_option
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the job to stop.")
@console_command("jobs stop")
def stop(session: Session, job_id, address, timeout) -> None:
    """Stop a running job (SIGTERM to its driver, then SIGKILL) and wait until it has stopped."""
    from maskunet_platform.jobs.client import TERMINAL, wait_for_status

    client = _client(address)
    with session.progress.stage(f"stop {job_id}"):
        asked = _server_call(f"stop {job_id}", client.stop_job, job_id)
        final = wait_for_status(client, job_id, TERMINAL, timeout)
    summary = Summary(f"maskunet jobs: {job_id} {final}", data={"id": job_id, "status": final, "stop_sent": asked})
    if not asked:
        summary.add("note:", "the job had already ended")
    session.finish(summary)
    if final not in TERMINAL:
        raise RunFailure(f"job {job_id} still {final} after {timeout:.0f}s")


def _duration(record: dict) -> str:
    from maskunet_platform.console.progress import format_duration

    return format_duration(record["duration_s"]) if record["duration_s"] is not None else "-"
