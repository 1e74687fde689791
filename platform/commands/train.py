"""`maskunet train` and `maskunet eval`."""
from pathlib import Path
from typing import Optional

import click

from maskunet_platform.console.errors import InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary
from maskunet_platform.subject import METHOD_LABELS

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "local.yaml"
SAMPLE_ROWS = 320
TITLES = {"new": "trained (new run)", "resume": "trained (resumed an unfinished run)",
          "extend": "trained (extended a finished run)", "finished": "already finished: not trained again"}


def load_job_or_fail(config_path: Optional[str], overrides: tuple[str, ...]):
    """(job, YAML text); a missing file or a bad field is InvalidInput (exit 2)."""
    from maskunet_platform.config import ConfigError, load_job

    path = Path(config_path) if config_path else DEFAULT_JOB
    if not path.exists():
        raise InvalidInput(f"job config {path} does not exist")
    try:
        return load_job(path, overrides), path.read_text()
    except ConfigError as e:
        raise InvalidInput(str(e)) from None


def ensure_sample_data(job, session: Session) -> None:
    """The embedded default reads local sample data; write it when the folder is missing
    (a subject job: the sample subject's images). A subject folder without usable images is invalid input."""
    source = job.data.source
    if job.data.subject is not None:
        from maskunet_platform.subject.data import SubjectDataError, instance_images, write_sample_subject

        if not Path(source).expanduser().exists():
            with session.progress.stage("sample subject images"):
                write_sample_subject(source)
        try:
            instance_images(source, job.data.resolution)
        except SubjectDataError as e:
            raise InvalidInput(str(e)) from None
        return
    if "://" in source or Path(source).expanduser().exists():
        return
    from maskunet_platform.data.sample import write_sample

    with session.progress.stage(f"sample data ({SAMPLE_ROWS} rows)"):
        write_sample(str(Path(source).expanduser()), rows=SAMPLE_ROWS, shards=4, seed=job.data.seed)


@click.command()
@click.option("-c", "--config", "config_path", default=None, help="Job YAML (default: jobs/local.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field, e.g. train.steps=10.")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address; default: local Ray.")
@click.option("--resume", "resume_run", metavar="RUN", default=None,
              help="Continue run RUN (also a finished one, to a larger train.steps).")
@click.option("--new", "start_new", is_flag=True, help="Start a new run even if this config already has one.")
@console_command("train")
def train(session: Session, config_path, overrides, address, resume_run, start_new) -> None:
    """Train the mask generator with Ray Train + DeepSpeed; track in MLflow.

    A changed config is a new run; the same config resumes its unfinished run, or reports its
    finished one without training again (--resume RUN extends, --new starts over)."""
    from maskunet_platform.train.base_check import check_base
    from maskunet_platform.train.launcher import train_job
    from maskunet_platform.train.runs import plan_run

    job, yaml_text = load_job_or_fail(config_path, overrides)
    plan = plan_run(job, resume_run, start_new)
    if plan.action != "finished":
        check_base(job.model)  # a base that cannot be loaded is invalid input: before any folder is made
        session.move_log(Path(job.train.export_dir).expanduser() / plan.run_name / "logs")
        session.line(plan.why)
        if plan.warning:
            session.warn(plan.warning)
        ensure_sample_data(job, session)
    outcome = train_job(job, address=address, job_yaml=yaml_text, plan=plan, progress=session.progress,
                        log_file=str(session.log.path), base_checked=True)
    session.finish(training_summary(outcome), next_step=_look_at(outcome, job))


def training_summary(outcome) -> Summary:
    m, e = outcome.metrics, outcome.eval or {}
    kind = _weights_kind(outcome.generator_dir)
    trained = METHOD_LABELS.get(kind, "trained")
    summary = Summary(f"maskunet train: run {outcome.run_name} {TITLES[outcome.action]}",
                      data=_training_json(outcome), show_timings=outcome.action != "finished",
                      show_log=outcome.action != "finished")
    summary.add("what happened:", outcome.why)
    if "step" in m:
        resumed = int(m.get("resumed_from_step") or 0)
        summary.add("steps:", f"{int(m['step'])}" + (f" (continued from step {resumed})" if resumed else ""))
    if "train/loss" in m:
        sparsity = m.get("train/sparsity_realised")
        tail = f"   sparsity {sparsity:.1%}" if sparsity is not None else ""
        summary.add("train loss:", f"{m['train/loss']:.5f}{tail}")
    if "eval/base_loss_overall" in e:
        # A subject job holds nothing out: its paired loss is over the subject data.
        label = "subject-data loss:" if "subject/items" in e else "held-out loss:"
        summary.add(label, f"base {e['eval/base_loss_overall']:.5f} -> {trained} "
                    f"{e['eval/masked_loss_overall']:.5f}  ({int(e['eval/rows'])} rows, paired)")
    if "shapes/base/kid" in e:
        from maskunet_platform.bench.shapes.benchmark import format_table

        summary.add("shapes bench:", f"{int(e.get('shapes/items', 0))} held-out prompt x seed pairs, paired")
        for row in format_table(e):
            summary.add("", row)
    if e.get("subject/items"):
        from maskunet_platform.subject.report import format_rows

        summary.add("subject:", f"appears in {int(e['subject/items'])} new-context prompt x seed pairs, "
                    f"base vs trained, paired ({Path(outcome.generator_dir).parent / 'subject_report.json'})")
        for row in format_rows(e, trained=trained):
            summary.add("", row)
    if outcome.mlflow_run_id:
        summary.add("mlflow run:", f"{outcome.mlflow_run_id} (experiment {outcome.experiment_id}, "
                    f"{outcome.tracking_uri})")
    summary.add("artifacts:", outcome.artifact_uri)
    summary.add("checkpoint:", outcome.checkpoint_path)
    if outcome.generator_dir:  # the run's export folder is what generate / serve / bench / eval take
        from maskunet.baselines import KIND_NAMES

        named = f"{KIND_NAMES[kind]}; " if kind else ""
        summary.add("trained weights:", f"{Path(outcome.generator_dir).parent}  ({named}pass it as --weights)")
    if outcome.model_version:
        summary.add("registered model:", f"{outcome.registered_model_name} v{outcome.model_version}")
    if outcome.action == "finished":
        summary.add("run log:", outcome.log_file)
    return summary


def _weights_kind(generator_dir: str) -> str | None:
    """"masks" | "lora" | "full" for a run's export; None without one (or when it was since removed)."""
    from maskunet.baselines import weights_kind

    try:
        return weights_kind(generator_dir) if generator_dir else None
    except ValueError:
        return None


def _training_json(outcome) -> dict:
    registered = ({"name": outcome.registered_model_name, "version": outcome.model_version}
                  if outcome.model_version else None)
    return {"run_name": outcome.run_name, "action": outcome.action, "why": outcome.why,
            "mlflow_run_id": outcome.mlflow_run_id, "tracking_uri": outcome.tracking_uri,
            "experiment_id": outcome.experiment_id, "artifact_uri": outcome.artifact_uri,
            "checkpoint": outcome.checkpoint_path, "generator_dir": outcome.generator_dir,
            "registered_model": registered, "metrics": outcome.metrics, "eval": outcome.eval,
            "timings": outcome.timings, "log_file": outcome.log_file}


def _look_at(outcome, job) -> Optional[str]:
    from maskunet_platform.commands.ui import ui_hint

    if not outcome.mlflow_run_id or not outcome.tracking_uri:
        return None
    return ui_hint(outcome.tracking_uri, job.tracking.local_store, outcome.experiment_id, outcome.mlflow_run_id)


@click.command(name="eval")
@click.option("--weights", "--masks", "masks", required=True,
              help="Trained weights of any method (local): a run's export folder <export_dir>/<run>/, the "
              "generator/, lora/ or unet/ folder in it, or an MLflow download; --masks is the same option.")
@click.option("--base", default=None, help="Base pipeline (default: the job's model.base).")
@click.option("--data", "data_uri", default=None, help="Held-out data URI (default: the job's data holdout split).")
@click.option("-c", "--config", "config_path", default=None, help="Job YAML for eval/data/tracking settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--address", envvar="RAY_ADDRESS", default=None)
@console_command("eval")
def evaluate(session: Session, masks, base, data_uri, config_path, overrides, address) -> None:
    """Paired held-out eval: same images, noise and timesteps for base and masked."""
    from maskunet_platform.train.eval_cli import run_eval_command

    job, _ = load_job_or_fail(config_path, overrides)
    if base:
        job = job.model_copy(update={"model": job.model.model_copy(update={"base": base})})
    try:
        metrics, run_id = run_eval_command(job, masks, data_uri, address, session.progress)
    except (FileNotFoundError, ValueError) as e:
        raise InvalidInput(str(e)) from None
    summary = Summary(f"maskunet eval: {masks}", data={"metrics": metrics, "mlflow_run_id": run_id})
    summary.add("rows:", int(metrics.get("eval/rows", 0)))
    for key in sorted(k for k in metrics if k.startswith("eval/base_loss_")):
        bucket = key[len("eval/base_loss_"):]
        summary.add(f"loss {bucket}:", f"base {metrics[key]:.6f}  masked {metrics[f'eval/masked_loss_{bucket}']:.6f}")
    summary.add("mlflow run:", run_id)
    session.finish(summary)
