"""`maskunet sweep`: Ray Tune over the job config (see platform/tune/)."""
import click

from maskunet_platform.commands.train import ensure_sample_data, load_job_or_fail
from maskunet_platform.console.errors import Interrupted, InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary

DEFAULT_SWEEP = "jobs/sweep-local.yaml"


@click.command()
@click.option("-c", "--config", "config_path", default=DEFAULT_SWEEP, show_default=True, help="Sweep job YAML.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
@click.option("--name", default=None, help="Sweep name (default: <job name>-sweep); --resume finds it by name.")
@click.option("--resume", is_flag=True, help="Continue the interrupted sweep of that name (finished trials stay).")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address; default: local Ray.")
@console_command("sweep")
def sweep(session: Session, config_path, overrides, name, resume, address) -> None:
    """Search mask hyperparameters: every trial a Ray Train run, ASHA stops the weak ones early,
    the full paired evaluation ranks the finished ones; MLflow parent + child runs."""
    from maskunet_platform.config import ConfigError
    from maskunet_platform.train.base_check import check_base
    from maskunet_platform.tune.sweep import SweepInterrupted, SweepSelectionError, check_sweep, run_sweep

    job, yaml_text = load_job_or_fail(config_path, overrides)
    name = name or f"{job.name}-sweep"
    try:
        check_sweep(job, name, resume)
    except (ConfigError, SweepSelectionError) as e:
        raise InvalidInput(str(e)) from None
    check_base(job.model)
    ensure_sample_data(job, session)
    try:
        outcome = run_sweep(job, name, resume, address, yaml_text, session.progress)
    except SweepInterrupted as e:
        raise Interrupted(str(e)) from None
    summary = Summary(f"maskunet sweep {name}: {len(outcome.trials)} trials, ranked by {job.tune.metric} "
                      f"({job.tune.mode})", data=outcome.to_json())
    table = outcome.table()
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        summary.add("", "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    best = outcome.best
    if best is not None:
        summary.add("best:", f"{best.trial_id} {job.tune.metric} {best.metric:.6g}")
    elif job.tune.constraints and any(t.status == "completed" for t in outcome.trials):
        summary.add("best:", "none: no completed trial meets tune.constraints "
                    + ", ".join(f"{k} {b.model_dump(exclude_none=True)}" for k, b in job.tune.constraints.items()))
    summary.add("mlflow parent run:", outcome.parent_run_id)
    summary.add("sweep wall time:", f"{outcome.wall_s:.1f}s")
    session.finish(summary, next_step=None)
