"""`maskunet train` and `maskunet eval`."""
import json
import sys
from pathlib import Path
from typing import Optional

import click

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "local.yaml"


class InvalidInput(click.ClickException):
    """Bad input (config, base model): one line naming the field, exit code 2."""

    exit_code = 2
SAMPLE_ROWS = 320


def _load(config_path: Optional[str], overrides: tuple[str, ...]):
    from maskunet_platform.config import ConfigError, load_job

    path = Path(config_path) if config_path else DEFAULT_JOB
    if not path.exists():
        raise InvalidInput(f"job config {path} does not exist")
    try:
        return load_job(path, overrides), path.read_text()
    except ConfigError as e:
        raise InvalidInput(str(e)) from None


def _ensure_sample_data(job) -> None:
    """The embedded default reads local sample data; write it when the folder is missing."""
    source = job.data.source
    if "://" in source or Path(source).expanduser().exists():
        return
    from maskunet_platform.data.sample import write_sample

    click.echo(f"writing {SAMPLE_ROWS} rows of sample laion-art data to {source}", err=True)
    write_sample(str(Path(source).expanduser()), rows=SAMPLE_ROWS, shards=4, seed=job.data.seed)


@click.command()
@click.option("-c", "--config", "config_path", default=None, help="Job YAML (default: jobs/local.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field, e.g. train.steps=10.")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address; default: local Ray.")
def train(config_path, overrides, address) -> None:
    """Train the mask generator with Ray Train + DeepSpeed; track in MLflow."""
    from maskunet_platform.train.base_check import BaseModelError
    from maskunet_platform.train.launcher import train_job

    job, yaml_text = _load(config_path, overrides)
    _ensure_sample_data(job)
    try:
        outcome = train_job(job, address=address, job_yaml=yaml_text)
    except BaseModelError as e:
        raise InvalidInput(str(e)) from None
    click.echo(f"run name:         {outcome.run_name}")
    click.echo(f"mlflow run id:    {outcome.mlflow_run_id}")
    click.echo(f"mlflow artifacts: {outcome.artifact_uri}")
    click.echo(f"checkpoint:       {outcome.checkpoint_path}")
    click.echo(f"mask generator:   {outcome.generator_dir}")
    if outcome.model_version:
        click.echo(f"registered model: {job.tracking.registered_model_name} v{outcome.model_version}")
    click.echo("timings:          " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items()))
    if outcome.eval:
        e = outcome.eval
        click.echo(f"held-out loss:    base {e['eval/base_loss_overall']:.5f}  masked "
                   f"{e['eval/masked_loss_overall']:.5f}  ({int(e['eval/rows'])} rows, paired)")


@click.command(name="eval")
@click.option("--masks", required=True, help="Mask-generator folder (local), e.g. an export or MLflow download.")
@click.option("--base", default=None, help="Base pipeline (default: the job's model.base).")
@click.option("--data", "data_uri", default=None, help="Held-out data URI (default: the job's data holdout split).")
@click.option("-c", "--config", "config_path", default=None, help="Job YAML for eval/data/tracking settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--address", envvar="RAY_ADDRESS", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(masks, base, data_uri, config_path, overrides, address, as_json) -> None:
    """Paired held-out eval: same images, noise and timesteps for base and masked."""
    from maskunet_platform.train.eval_cli import run_eval_command

    job, _ = _load(config_path, overrides)
    if base:
        job = job.model_copy(update={"model": job.model.model_copy(update={"base": base})})
    try:
        metrics, run_id = run_eval_command(job, masks, data_uri, address)
    except (FileNotFoundError, ValueError) as e:
        raise InvalidInput(str(e)) from None
    if as_json:
        json.dump({"metrics": metrics, "mlflow_run_id": run_id}, sys.stdout, indent=2)
        click.echo()
        return
    for key, value in sorted(metrics.items()):
        click.echo(f"{key:40s} {value:.6f}")
    click.echo(f"mlflow run id: {run_id}")
