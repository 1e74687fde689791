"""`maskunet eval`: paired held-out eval of a mask generator, logged as its own MLflow run."""
from pathlib import Path
from typing import Optional

from maskunet_platform.config import JobConfig


def run_eval_command(job: JobConfig, masks: str, data_uri: Optional[str], address: Optional[str], progress=None):
    """Returns (metrics, mlflow run id or None). The eval runs as a Ray task, not in this process;
    `progress` (console.progress.Progress) gets the stages."""
    from maskunet_platform.console.progress import Progress

    from maskunet_platform.train.base_check import check_base, check_weights
    from maskunet_platform.train.launcher import connect_ray
    from maskunet_platform.train.post_training import GeneratorSource, run_post_training

    progress = progress or Progress()
    check_base(job.model)
    generator = GeneratorSource.from_folder(check_weights(masks, job.model.base))
    with progress.stage("start Ray"):
        connect_ray(address, job)
    # An explicit --data set is all held-out; the job's own data uses its holdout split.
    split = "all" if data_uri else "holdout"
    with progress.stage("evaluate (Ray task)"):
        metrics = run_post_training(job, generator, data_uri, split).eval.metrics()
    if not job.tracking.enabled:
        return metrics, None
    with progress.stage("MLflow log"):
        return metrics, _log_eval_run(job, metrics, masks, data_uri or job.data.source)


def _log_eval_run(job: JobConfig, metrics: dict, masks: str, data_uri: str) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from maskunet_platform.train.tracking import experiment_id, log_metrics, tracking_uri

    uri = tracking_uri(job.tracking)
    client = MlflowClient(uri)
    run = client.create_run(experiment_id(client, job.tracking, uri), run_name=f"eval-{Path(masks).name}",
                            tags={"maskunet.kind": "eval", "maskunet.base_model": job.model.base,
                                  "maskunet.data_source": data_uri})
    params = {"masks": masks, "base": job.model.base, "data": data_uri, "eval.rows": str(job.train.eval.rows),
              "eval.seed": str(job.train.eval.seed), "eval.timestep_buckets": str(job.train.eval.timestep_buckets)}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    log_metrics(client, run.info.run_id, metrics, 0)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
