"""`maskunet sweep`: Ray Tune over the job config, every trial a Ray Train run, ASHA deciding
on the quick held-out score, the full paired evaluation ranking finished trials, MLflow
parent + child runs. `results.py` turns the Tune results into the table and the JSON."""
import signal
import time
from pathlib import Path
from typing import Optional

from maskunet_platform.config import JobConfig
from maskunet_platform.tune.results import SweepOutcome, summarize
from maskunet_platform.tune.space import check_search_space, param_space
from maskunet_platform.tune.trial import SweepSetup, run_trial

QUICK_METRIC = "eval/quick_masked_loss"


class SweepInterrupted(RuntimeError):
    """Ctrl-C during the sweep: Tune saved its state; the message says how to resume."""


class SweepSelectionError(ValueError):
    """--resume of a sweep that does not exist, or a new sweep over an existing one (invalid input)."""


def sweep_storage(job: JobConfig):
    """(root path, pyarrow filesystem or None): local, or s3:// through the project's S3 filesystem."""
    from maskunet_platform.train.launcher import storage_location

    return storage_location(job.tune.storage_path, job.data.s3_endpoint_url, create=False)


def sweep_exists(job: JobConfig, name: str) -> bool:
    import pyarrow.fs as pafs

    root, filesystem = sweep_storage(job)
    if filesystem is None:
        return (Path(root) / name / "tuner.pkl").exists()
    return filesystem.get_file_info(f"{root}/{name}/tuner.pkl").type == pafs.FileType.File


def check_sweep(job: JobConfig, name: str, resume: bool) -> None:
    """Everything that can be wrong with the request, before Ray starts."""
    check_search_space(job)
    subject = job.data.subject is not None
    final = ("eval/", "subject/") if subject else ("eval/",)
    reported = "eval/... metrics (the full paired evaluation, e.g. eval/masked_loss_overall)" + (
        " and subject/... (the subject report, e.g. subject/diff/subject)" if subject else "")
    for field, metric in [("tune.metric", job.tune.metric), *((f"tune.constraints.{m}", m) for m in job.tune.constraints)]:
        if metric != QUICK_METRIC and not metric.startswith(final):
            raise SweepSelectionError(f"{field} {metric!r}: trials report {reported}")
    exists = sweep_exists(job, name)
    if resume and not exists:
        raise SweepSelectionError(f"--resume: no sweep named {name!r} under {job.tune.storage_path}")
    if not resume and exists:
        raise SweepSelectionError(f"a sweep named {name!r} exists: --resume to continue it, or --name NEW")


def scheduler(job: JobConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = job.tune.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    # ASHA decides on the quick held-out score (identical rows, noise and timesteps in every
    # trial); the step is the time axis, so grace periods are in optimizer steps.
    # A trial that reaches the last step is left to finish on its own (stop_last_trials off):
    # its full evaluation still has to run, and Train must shut its workers down gracefully.
    # The quick score is a loss whatever tune.mode ranks the final metric by.
    return ASHAScheduler(time_attr="step", metric=QUICK_METRIC, mode="min", grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, max_t=job.train.steps, stop_last_trials=False)


def run_sweep(job: JobConfig, name: str, resume: bool, address: Optional[str], job_yaml: str,
              progress) -> SweepOutcome:
    from ray import tune

    from maskunet_platform.train.base import resolve_base
    from maskunet_platform.train.launcher import connect_ray
    from maskunet_platform.train.quick_eval import quick_eval_batch
    from maskunet_platform.tune.tracking import finish_parent, start_parent

    started = time.perf_counter()
    with progress.stage("start Ray"):
        connect_ray(address, job, dashboard=True)
    with progress.stage("prepare base model"):
        base_location = resolve_base(job.model)
    if job.data.subject is not None:  # every trial trains on the same prepared subject data
        from maskunet_platform.subject.data import prepare_subject_job

        job = prepare_subject_job(job, base_location, progress)
    with progress.stage("quick held-out batch"):
        quick = quick_eval_batch(job, base_location, job.tune.quick_eval_rows)
    parent = start_parent(job, name, job_yaml) if job.tracking.enabled else None
    setup = SweepSetup(job.model_dump(mode="json"), name, base_location, quick,
                       parent and parent.run_id)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"cpu": 1})
    root, filesystem = sweep_storage(job)
    if resume:
        tuner = tune.Tuner.restore(f"{root}/{name}", trainable, resume_unfinished=True, resume_errored=False,
                                   storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space(job.tune), tune_config=tune.TuneConfig(
            num_samples=job.tune.num_samples, max_concurrent_trials=job.tune.max_concurrent_trials,
            scheduler=scheduler(job)), run_config=tune.RunConfig(
            name=name, storage_path=root, storage_filesystem=filesystem, failure_config=tune.FailureConfig(
                max_failures=job.train.max_failures), verbose=0))
    handler = signal.getsignal(signal.SIGINT)
    with progress.stage(f"sweep {name} (trials as Ray Train runs)"):
        grid = tuner.fit()
    # On Ctrl-C Tune saves its state, puts back the SIGINT handler it found and returns as if
    # done; after a full run its own handler is still installed.
    if signal.getsignal(signal.SIGINT) is handler:
        if parent is not None:
            from mlflow import MlflowClient

            MlflowClient(parent.tracking_uri).set_terminated(parent.run_id, "KILLED")  # resumable
        raise SweepInterrupted(f"sweep {name!r} interrupted; `maskunet sweep --name {name} --resume` continues it")
    outcome = summarize(grid, job, name, parent)
    outcome.wall_s = time.perf_counter() - started
    if parent is not None:
        with progress.stage("MLflow log (parent run)"):
            finish_parent(job, outcome, parent)
    return outcome
