"""Driver side: Ray connection, TorchTrainer construction, fit, then export/eval/log/register."""
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

import ray

from maskunet_platform.config import JobConfig

log = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    run_name: str
    checkpoint_path: str  # latest Ray Train checkpoint (local path or bucket/prefix on S3)
    generator_dir: str  # exported trained weights (local): MaskGenerator, LoRA or U-Net folder
    metrics: dict
    mlflow_run_id: Optional[str] = None
    artifact_uri: Optional[str] = None
    model_version: Optional[str] = None
    eval: Optional[dict] = None
    timings: dict = field(default_factory=dict)  # stage -> seconds
    post_training_where: str = ""  # where evaluation and samples ran (rank 0 or a Ray task, never the driver)
    action: str = "new"  # new | resume | extend | finished (see runs.py)
    why: str = ""  # what happened to the run and why, one sentence
    tracking_uri: Optional[str] = None
    experiment_id: Optional[str] = None
    registered_model_name: Optional[str] = None
    log_file: Optional[str] = None

    @classmethod
    def from_record(cls, plan) -> "TrainingOutcome":
        """A finished run's outcome as its record keeps it."""
        result = (plan.record or {}).get("result") or {}
        known = {k: v for k, v in result.items() if k in cls.__dataclass_fields__}
        known.setdefault("run_name", plan.run_name)
        known.setdefault("checkpoint_path", "")
        known.setdefault("generator_dir", "")
        known.setdefault("metrics", {})
        return cls(**{**known, "action": "finished", "why": plan.why})


def connect_ray(address: Optional[str], job: JobConfig, dashboard: bool = False) -> None:
    """Join a cluster (`--address`/RAY_ADDRESS) or start a local Ray sized for workers + data tasks.

    Workers get the driver's settings and credentials from its environment (worker_env.py);
    each worker sets its own DeepSpeed env (configure_worker_env, `~` expanded there).
    `dashboard` (sweeps): a local Ray with its dashboard on 127.0.0.1, named to every worker
    through RAY_API_SERVER_ADDRESS. Ray Train's placement-group cleaner asks the state API
    whether a trial's Train controller is alive; without the dashboard, or with another Ray
    on the machine, it cannot, and the placement group of a trial ASHA stopped leaks and
    starves the next trial."""
    from maskunet_platform.train.worker_env import check_cluster_tracking, worker_runtime_env

    address = address or os.environ.get("RAY_ADDRESS")
    check_cluster_tracking(job, address)  # before anything starts
    if ray.is_initialized():
        return
    runtime_env = worker_runtime_env(job.train.use_gpu, address)
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    runtime_env["env_vars"] |= {k: os.environ.get(k, v) for k, v in LOCAL_TRAIN_SETTINGS.items()}
    # Training workers hold their CPUs for the whole run; Ray Data's read/preprocess tasks
    # need slots of their own, or the input pipeline starves.
    need = int(job.train.num_workers * job.train.cpus_per_worker) + 2
    options: dict = {"include_dashboard": dashboard}
    if dashboard:
        port = free_local_port()
        options |= {"dashboard_host": "127.0.0.1", "dashboard_port": port}
        runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=max(os.cpu_count() or 1, need), runtime_env=runtime_env, **options)


def data_cpu_shortfall(job: JobConfig, cluster_cpus: float) -> Optional[str]:
    """A warning when a joined cluster's CPUs all go to the training workers: Ray Data's read and
    preprocessing tasks then never get a CPU and the first step waits until the cluster scales up
    (forever on a fixed-size cluster; Ray only says so in its own log)."""
    train = job.train.num_workers * job.train.cpus_per_worker
    if cluster_cpus >= train + 1:
        return None
    return (f"the Ray cluster has {cluster_cpus:g} CPUs and the training workers take {train:g} "
            f"(train.num_workers x train.cpus_per_worker), leaving less than 1 for Ray Data's preprocessing "
            f"tasks: training waits until the cluster adds CPUs. Lower train.cpus_per_worker or add CPUs.")


# Ray Train settings for a Ray this command starts on one machine (a set environment wins):
# its controller polls the workers every 0.5 s, not 2 s (each phase of a run waits for a
# poll), and no actor process watches for node preemption, which a single machine never sees.
LOCAL_TRAIN_SETTINGS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def free_local_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(job: JobConfig, run_name: str, callbacks: tuple = ()):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    storage_path, filesystem = storage_location(job.train.storage_path, job.data.s3_endpoint_url)
    return RunConfig(
        name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=job.train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=job.train.checkpoints_to_keep),
        callbacks=list(callbacks),
    )


def storage_location(storage_path: str, endpoint_url: Optional[str] = None, create: bool = True):
    """(path, pyarrow filesystem or None): s3:// goes through an explicit S3 filesystem so an
    S3-compatible endpoint (AWS_ENDPOINT_URL, moto, MinIO) is honoured on every node."""
    if storage_path.startswith("s3://"):
        from maskunet_platform.data.uri import s3_filesystem

        return storage_path[len("s3://"):].rstrip("/"), s3_filesystem(endpoint_url)
    local = Path(storage_path).expanduser().resolve()
    if create:
        local.mkdir(parents=True, exist_ok=True)
    return str(local), None


def build_trainer(job: JobConfig, run_name: str, tracking: Optional[dict], base_location: str, board=None,
                  quick_eval: Optional[dict] = None, callbacks: tuple = (), post_training: Optional[dict] = None):
    """`quick_eval`: fixed held-out rows scored at every report; `callbacks`: Ray Train run
    callbacks (a sweep's trial passes Tune's report callback); `post_training`: what rank 0
    does after the final checkpoint (see loop.train_loop_per_worker)."""
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from maskunet_platform.data.encode import trainer_gpu_share
    from maskunet_platform.data.pipeline import execution_options, open_source
    from maskunet_platform.data.stats import drop_counter
    from maskunet_platform.train.entry import train_loop_per_worker

    train = job.train
    backend = train.backend if train.backend != "auto" else ("nccl" if train.use_gpu else "gloo")
    resources = {"CPU": train.cpus_per_worker}
    if train.use_gpu:  # a share of each GPU is left to the encode actors when they run on GPUs
        resources["GPU"] = trainer_gpu_share(job.data)
    # A callable: Ray Train builds the dataset at every worker-group start, so a restart
    # inside this fit resumes the stream after the rows its checkpoint had trained on. It runs
    # in Ray Train's controller: source and storage are opened here, with the driver's settings.
    storage = storage_location(train.storage_path, job.data.s3_endpoint_url)
    drop_counter(drop_counter_name(run_name))  # owned by the driver: outlives worker-group restarts
    datasets = {"train": partial(_train_dataset, job, base_location, run_name, open_source(job.data), storage)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "tracking": tracking,
                           "drop_counter": drop_counter_name(run_name), "progress": board,
                           "quick_eval": quick_eval, "post_training": post_training},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend=backend),
        run_config=run_config(job, run_name, callbacks),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=execution_options(job.data)),
    )


def _train_dataset(job: JobConfig, base_location: str, run_name: str, source, storage):
    from maskunet_platform.data.pipeline import build_dataset
    from maskunet_platform.subject.data import LOSS_WEIGHT
    from maskunet_platform.train.recovery import rows_trained_at_newest_checkpoint

    return build_dataset(job.data, base_location, split="train", counter_name=drop_counter_name(run_name),
                         resume_rows=rows_trained_at_newest_checkpoint(job, run_name, storage), source=source,
                         passthrough=(LOSS_WEIGHT,) if job.data.subject else ())


def drop_counter_name(run_name: str) -> str:
    return f"maskunet-data-drops-{run_name}"


def train_job(job: JobConfig, address: Optional[str] = None, job_yaml: Optional[str] = None,
              finalize: bool = True, plan=None, progress=None, log_file: Optional[str] = None,
              base_checked: bool = False) -> TrainingOutcome:
    """Run a whole training job as `plan` (default: `runs.plan_run(job)`) says: a new run, a
    resumed or extended one (fit continues from its newest checkpoint), then finalize. A run
    that already finished is returned from its record without starting anything.

    A base that cannot be loaded fails here, before Ray, any worker or an MLflow run starts;
    a failure after the run was created marks that run FAILED (it resumes on the next try).
    `progress` (console.progress.Progress) receives stages and training steps.
    """
    from maskunet_platform.console.progress import Progress
    from maskunet_platform.train.base_check import check_base
    from maskunet_platform.train.runs import RunStorage, now, plan_run

    plan = plan or plan_run(job)
    if plan.action == "finished":
        return TrainingOutcome.from_record(plan)
    if not base_checked:
        check_base(job.model)
    live = progress is not None  # a console is watching: stream rank 0's steps to it
    progress = progress or Progress()
    subject = job.data.subject is not None  # its MLflow run records the prepared data: started after it
    target = _start_ray_and_tracking(job, address, plan, progress, tracking=not subject)
    if address or os.environ.get("RAY_ADDRESS"):  # a cluster this command joined: is it big enough?
        warning = data_cpu_shortfall(job, ray.cluster_resources().get("CPU", 0.0))
        if warning:
            progress.warn(warning)
    with progress.stage("prepare base model"):
        from maskunet_platform.train.base import resolve_base

        base_location = resolve_base(job.model)
    if subject:  # a folder of subject images -> parquet the pipeline reads
        from maskunet_platform.subject.data import prepare_subject_job
        from maskunet_platform.train.tracking import start_or_resume_run

        job = prepare_subject_job(job, base_location, progress)
        if job.tracking.enabled:
            with progress.stage("start MLflow run"):
                target = start_or_resume_run(job, plan.run_name, plan.fingerprint, reopen=plan.action == "extend")
    storage = RunStorage(job)
    # A run keeps the fingerprint it was created with (an extension with more steps does not rename it).
    storage.write_record(plan.run_name, status="running", job=job.name,
                         fingerprint=(plan.record or {}).get("fingerprint", plan.fingerprint),
                         steps=job.train.steps, started_at=(plan.record or {}).get("started_at", now()),
                         mlflow_run_id=target.run_id if target else None)
    try:
        outcome = _fit_and_finalize(job, plan.run_name, target, base_location, job_yaml, finalize, progress,
                                    live=live)
    except BaseException as e:
        if target is not None:
            _mark_failed(target)
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        storage.write_record(plan.run_name, status="failed", error=first_line[:300])
        raise
    outcome.action, outcome.why, outcome.log_file = plan.action, plan.why, log_file
    if target is not None:
        outcome.tracking_uri, outcome.experiment_id = target.tracking_uri, target.experiment_id
        outcome.registered_model_name = job.tracking.registered_model_name if outcome.model_version else None
    if finalize:
        storage.write_record(plan.run_name, status="finished", finished_at=now(), result=asdict(outcome))
    return outcome


def _start_ray_and_tracking(job: JobConfig, address: Optional[str], plan, progress, tracking: bool = True):
    """Connect Ray and (with `tracking` and tracking enabled) start or resume the MLflow run at
    the same time: both mostly wait (on Ray's processes, on the store) and neither needs the
    other. Returns the tracking target, or None."""
    from concurrent.futures import ThreadPoolExecutor

    from maskunet_platform.train.tracking import start_or_resume_run
    from maskunet_platform.train.worker_env import check_cluster_tracking

    if not (tracking and job.tracking.enabled):
        with progress.stage("start Ray"):
            connect_ray(address, job)
        return None
    check_cluster_tracking(job, address or os.environ.get("RAY_ADDRESS"))  # before either starts
    with progress.stage("start Ray + MLflow run") as stage, ThreadPoolExecutor(1, "maskunet-mlflow") as pool:
        mlflow_start = pool.submit(_timed, start_or_resume_run, job, plan.run_name, plan.fingerprint,
                                   reopen=plan.action == "extend")
        try:
            ray_seconds, _ = _timed(connect_ray, address, job)
        except BaseException:
            if mlflow_start.exception() is None:  # the run exists: it failed before training began
                _mark_failed(mlflow_start.result()[1])
            raise
        mlflow_seconds, target = mlflow_start.result()
        stage.parts = {"start Ray": ray_seconds, "start MLflow run (meanwhile)": mlflow_seconds}
    return target


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def _fit_and_finalize(job: JobConfig, run_name: str, target, base_location: str, job_yaml: Optional[str],
                      finalize: bool, progress, live: bool) -> TrainingOutcome:
    """Fit (with `live`, rank 0's steps reach `progress` while fit() blocks; with `finalize`,
    rank 0 also evaluates the final weights), export, finalize."""
    from maskunet_platform.console.train_progress import BoardWatcher, ProgressBoard
    from maskunet_platform.data.stats import on_this_node
    from maskunet_platform.train.post_training import rank0_post_training, stage_parts, take_post_training

    with progress.stage("open data + build trainer"):
        # Rank 0's channel to the driver: its steps (`live`) and its post-training result (`finalize`).
        board = ProgressBoard.options(**on_this_node()).remote() if live or finalize else None
        rank0 = rank0_post_training(job, target is not None, board) if finalize else None
        trainer = build_trainer(job, run_name, asdict(target) if target else None, base_location,
                                board if live else None, post_training=rank0)
    watcher = BoardWatcher(board, progress, job.train.steps).start() if live else None
    started, fitted, post = time.perf_counter(), False, None
    try:
        result = trainer.fit()
        fitted = result.error is None
        post = take_post_training(board) if fitted and finalize else None
    finally:
        _stop_watching(watcher, fitted, post)
        if board is not None:
            ray.kill(board)
    fit_seconds = time.perf_counter() - started
    if result.error is not None:
        raise RuntimeError(f"training run {run_name!r} failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without a checkpoint")
    if isinstance(post, str):
        raise RuntimeError(f"training run {run_name!r}: post-training failed in the rank-0 worker: {post}")
    outcome = TrainingOutcome(run_name, result.checkpoint.path, "", dict(result.metrics or {}))
    outcome.timings["fit"] = fit_seconds
    if post is not None and watcher is None:  # no console watching: record the stage rank 0 did
        with progress.stage(rank0["stage"]) as done:
            done.parts = stage_parts(post)
    with progress.stage("export generator"):
        outcome.generator_dir = str(export_final_generator(result.checkpoint, job, run_name))
    if target is not None:
        outcome.mlflow_run_id = target.run_id
    if finalize:
        from maskunet_platform.train.finalize import finalize_run

        finalize_run(job, outcome, target, result.checkpoint, job_yaml, progress, post=post)
    return outcome


def _stop_watching(watcher, fitted: bool, post) -> None:
    """Close the console's stages (the post-training one with its parts)."""
    from maskunet_platform.train.post_training import stage_parts

    if watcher is None:
        return
    if watcher.post_training is not None and post is not None and not isinstance(post, str):
        watcher.post_training.parts = stage_parts(post)
    watcher.stop(ok=fitted and not isinstance(post, str))


def _mark_failed(target) -> None:
    from mlflow import MlflowClient

    try:
        MlflowClient(target.tracking_uri).set_terminated(target.run_id, "FAILED")
    except Exception as e:  # noqa: BLE001 - the original error is the one to surface
        log.warning("could not mark MLflow run %s FAILED: %s", target.run_id, e)


def export_final_generator(checkpoint, job: JobConfig, run_name: str) -> Path:
    """Copy the consolidated trained weights (only that folder, not the DeepSpeed shards) out
    of the final checkpoint to <export_dir>/<run>/{generator | lora | unet} (by train.method)."""
    import shutil

    from maskunet_platform.train.checkpoint import download_generator
    from maskunet_platform.train.methods import EXPORT_NAMES

    out = Path(job.train.export_dir).expanduser() / run_name / EXPORT_NAMES[job.train.method]
    shutil.rmtree(out, ignore_errors=True)
    return download_generator(checkpoint, out)
