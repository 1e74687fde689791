"""The sweep's MLflow parent run: the spec in, the summary out (best config, table, plot)."""
import csv
import io
import json

import yaml

from maskunet_platform.config import JobConfig
from maskunet_platform.train.tracking import TrackingTarget, start_or_resume_run
from maskunet_platform.tune.plot import sweep_plot_png
from maskunet_platform.tune.results import COMPLETED, SweepOutcome


def start_parent(job: JobConfig, sweep: str, job_yaml: str) -> TrackingTarget:
    """The sweep's run (the same one when the sweep resumes), with the spec as artifacts."""
    from mlflow import MlflowClient

    target = start_or_resume_run(job, sweep)
    client = MlflowClient(target.tracking_uri)
    client.set_tag(target.run_id, "maskunet.kind", "sweep")
    client.log_text(target.run_id, job_yaml, "sweep.yaml")
    space = {k: v.model_dump(exclude_none=True) for k, v in job.tune.search_space.items()}
    client.log_dict(target.run_id, {"search_space": space, **job.tune.model_dump(exclude={"search_space"})},
                    "search_space.json")
    return target


def finish_parent(job: JobConfig, outcome: SweepOutcome, parent: TrackingTarget) -> None:
    """Close the children Tune stopped, then the summary on the parent run."""
    from mlflow import MlflowClient

    client = MlflowClient(parent.tracking_uri)
    children = client.search_runs([parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    by_trial = {run.data.tags.get("maskunet.trial_id"): run for run in children}
    for trial in outcome.trials:
        run = by_trial.get(trial.trial_id)
        if run is None:
            continue
        trial.run_id = run.info.run_id
        if run.info.status == "RUNNING":  # stopped by ASHA (or the sweep was interrupted)
            client.set_tag(run.info.run_id, "maskunet.trial_status", trial.status)
            client.set_terminated(run.info.run_id, "KILLED" if trial.status != COMPLETED else "FINISHED")
    buffer = io.StringIO()
    csv.writer(buffer).writerows(outcome.table())
    client.log_text(parent.run_id, buffer.getvalue(), "sweep_summary.csv")
    client.log_dict(parent.run_id, outcome.to_json(), "sweep_summary.json")
    client.log_image(parent.run_id, _image(sweep_plot_png(outcome)), "sweep_plot.png")
    best = outcome.best
    if best is not None:
        client.log_text(parent.run_id, yaml.safe_dump(best.config, sort_keys=True), "best_config.yaml")
        client.log_metric(parent.run_id, f"best/{job.tune.metric}", best.metric)
        client.set_tag(parent.run_id, "maskunet.best_trial", best.trial_id)
    client.log_metric(parent.run_id, "sweep/trials_completed",
                      sum(t.status == COMPLETED for t in outcome.trials))
    if best is not None and job.tune.register_best:
        client.set_tag(parent.run_id, "maskunet.registered_best", register_best(job, best, by_trial[best.trial_id]))
    client.set_terminated(parent.run_id, "FINISHED")


def register_best(job: JobConfig, best, child) -> str:
    """The best trial's generator as a new registered-model version, tagged with the sweep."""
    import tempfile
    from pathlib import Path

    import ray.train

    from maskunet_platform.registry.evidence import TAG_PREFIX
    from maskunet_platform.registry.register import log_and_register
    from maskunet_platform.train.base import resolve_base
    from maskunet_platform.train.checkpoint import download_generator
    from maskunet_platform.train.launcher import storage_location
    from maskunet_platform.tune.space import trial_job
    from maskunet_platform.tune.trial import CHECKPOINT_TAG

    trial = trial_job(job, best.config)
    _, filesystem = storage_location(job.train.storage_path, job.data.s3_endpoint_url, create=False)
    checkpoint = ray.train.Checkpoint(child.data.tags[CHECKPOINT_TAG], filesystem=filesystem)
    tags = {"run_id": child.info.run_id, "base_model": trial.model.base, "data_source": trial.data.source,
            "mask_config": json.dumps(trial.mask.model_dump(mode="json"), sort_keys=True),
            "maskunet.sweep": child.data.tags["maskunet.sweep"], "maskunet.trial_id": best.trial_id,
            **{k: v for k, v in child.data.tags.items() if k.startswith(TAG_PREFIX)}}
    with tempfile.TemporaryDirectory(prefix="maskunet-best-") as tmp:
        generator = download_generator(checkpoint, Path(tmp) / "generator")
        s = trial.train.samples
        version = log_and_register(child.info.run_id, _uri(job), job.tracking.registered_model_name,
                                   resolve_base(trial.model), generator, tags,
                                   {"num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale},
                                   Path(tmp))
    return f"{job.tracking.registered_model_name} v{version.version}"


def _uri(job: JobConfig) -> str:
    from maskunet_platform.train.tracking import tracking_uri

    return tracking_uri(job.tracking)


def _image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))
