"""MLflow: where runs go, params (flattened config, never secrets), metrics, artifacts."""
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from maskunet_platform.config import JobConfig
from maskunet_platform.config.tracking import TrackingSection

# Param names that may carry credentials are never logged, whatever their value.
SECRET_NAME = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key|private)", re.I)
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
RUN_NAME_TAG = "maskunet.run_name"


@dataclass
class TrackingTarget:
    """Where one training run logs: plain strings, so it travels to Ray workers."""

    tracking_uri: str
    run_id: str
    experiment_id: str


def tracking_uri(section: TrackingSection) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else the embedded local sqlite store."""
    if section.tracking_uri:
        return section.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = Path(section.local_store).expanduser().resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_location(section: TrackingSection, uri: str) -> Optional[str]:
    if section.artifact_location:
        return section.artifact_location
    if uri.startswith("sqlite:"):  # embedded store: artifacts next to the db, not in the cwd
        return (Path(section.local_store).expanduser().resolve() / "artifacts").as_uri()
    return None


def flatten_params(job: JobConfig) -> dict[str, str]:
    """Flattened config as MLflow params, dropping secret-looking names and URL credentials."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
            return
        if SECRET_NAME.search(prefix):
            return
        text = URL_USERINFO.sub("***@", str(value))
        flat[prefix] = text[:6000]  # MLflow's param value limit

    walk("", job.model_dump(mode="json"))
    return flat


def experiment_id(client, section: TrackingSection, uri: str) -> str:
    """The id of `section.experiment`, created (with its artifact location) when missing."""
    experiment = client.get_experiment_by_name(section.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(section.experiment, artifact_location=artifact_location(section, uri))


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    """One batch of metrics at `step`, timestamped now (a "step" entry is the x-axis, not a metric)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"])


def start_or_resume_run(job: JobConfig, run_name: str) -> TrackingTarget:
    """The unfinished MLflow run of this Ray run name (a resume), else a new run."""
    from mlflow import MlflowClient

    uri = tracking_uri(job.tracking)
    client = MlflowClient(uri)
    experiment = experiment_id(client, job.tracking, uri)
    found = client.search_runs([experiment], f"tags.`{RUN_NAME_TAG}` = '{run_name}' and attributes.status != 'FINISHED'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        return TrackingTarget(uri, found[0].info.run_id, experiment)
    tags = {RUN_NAME_TAG: run_name, "maskunet.base_model": job.model.base,
            "maskunet.data_source": job.data.source, **job.tracking.tags}
    run = client.create_run(experiment, run_name=run_name, tags=tags)
    params = flatten_params(job)
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return TrackingTarget(uri, run.info.run_id, experiment)


class WorkerTracker:
    """Metric logging from inside a Ray worker (enabled on rank 0 only)."""

    def __init__(self, target: Optional[dict], enabled: bool):
        self.enabled = bool(target) and enabled
        if self.enabled:
            from mlflow import MlflowClient

            self.client = MlflowClient(target["tracking_uri"])
            self.run_id = target["run_id"]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            log_metrics(self.client, self.run_id, metrics, step)

    def close(self) -> None:
        self.enabled = False
