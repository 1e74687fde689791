"""`maskunet compare`: masks vs. LoRA vs. full fine-tuning, one table and one grid."""
from pathlib import Path

import click

from maskunet_platform.console.errors import InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary

DEFAULT_COMPARE_JOB = Path(__file__).resolve().parents[2] / "jobs" / "compare-local.yaml"


@click.command()
@click.option("-c", "--config", "config_path", default=None, help="Job YAML (default: jobs/compare-local.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address; default: local Ray.")
@console_command("compare")
def compare(session: Session, config_path, overrides, address) -> None:
    """Train each of compare.methods on the same data, base and budget; evaluate all with the same
    paired held-out loss and shapes benchmark; print and log one table and an image grid."""
    from maskunet_platform.commands.train import ensure_sample_data, load_job_or_fail
    from maskunet_platform.compare.runner import method_job, run_compare
    from maskunet_platform.compare.table import format_table
    from maskunet_platform.config import ConfigError
    from maskunet_platform.train.base_check import check_base

    job, _ = load_job_or_fail(config_path or str(DEFAULT_COMPARE_JOB), overrides)
    try:
        for method in job.compare.methods:
            method_job(job, method)
    except ConfigError as e:
        raise InvalidInput(str(e)) from None
    check_base(job.model)
    ensure_sample_data(job, session)
    outcome = run_compare(job, address, session.progress)
    summary = Summary(f"maskunet compare: {', '.join(job.compare.methods)} on the same data and budget "
                      f"({job.train.steps} steps x {job.data.batch_size} x {job.train.num_workers} workers)",
                      data={**outcome.table.to_json(), "grid": str(outcome.grid_path),
                            "mlflow_run_id": outcome.mlflow_run_id, "out_dir": str(outcome.out_dir),
                            "runs": {r.method: r.run_name for r in outcome.results},
                            "weights": {r.method: r.weights_dir for r in outcome.results}})
    for line in format_table(outcome.table):
        summary.add("", line)
    summary.add("grid:", str(outcome.grid_path))
    summary.add("table:", str(outcome.out_dir / "table.json"))
    if outcome.mlflow_run_id:
        summary.add("mlflow run:", outcome.mlflow_run_id)
    session.finish(summary)
