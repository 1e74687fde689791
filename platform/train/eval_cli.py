"""`maskunet eval`: paired held-out eval of a mask generator, logged as its own MLflow run."""
from pathlib import Path
from typing import Optional

from maskunet_platform.config import JobConfig


def run_eval_command(job: JobConfig, masks: str, data_uri: Optional[str], address: Optional[str]):
    """Returns (metrics, mlflow run id or None)."""
    from maskunet_platform.train.base import resolve_base
    from maskunet_platform.train.finalize import run_paired_eval
    from maskunet_platform.train.launcher import connect_ray

    if not (Path(masks) / "config.json").exists():
        raise FileNotFoundError(f"--masks {masks!r} is not a mask-generator folder (no config.json)")
    connect_ray(address, job)
    base_location = resolve_base(job.model)
    # An explicit --data set is all held-out; the job's own data uses its holdout split.
    split = "all" if data_uri else "holdout"
    result = run_paired_eval(job, base_location, masks, data_uri, split)
    metrics = result.metrics()
    if not job.tracking.enabled:
        return metrics, None
    return metrics, _log_eval_run(job, metrics, masks, data_uri or job.data.source)


def _log_eval_run(job: JobConfig, metrics: dict, masks: str, data_uri: str) -> str:
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from maskunet_platform.train.tracking import artifact_location, tracking_uri

    uri = tracking_uri(job.tracking)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        job.tracking.experiment, artifact_location=artifact_location(job.tracking, uri))
    run = client.create_run(experiment_id, run_name=f"eval-{Path(masks).name}",
                            tags={"maskunet.kind": "eval", "maskunet.base_model": job.model.base,
                                  "maskunet.data_source": data_uri})
    now = int(time.time() * 1000)
    params = {"masks": masks, "base": job.model.base, "data": data_uri, "eval.rows": str(job.train.eval.rows),
              "eval.seed": str(job.train.eval.seed), "eval.timestep_buckets": str(job.train.eval.timestep_buckets)}
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
