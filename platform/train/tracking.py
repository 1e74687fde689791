"""MLflow: where runs go, params (flattened config, never secrets), metrics, artifacts."""
import json
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from maskunet_platform.config import JobConfig
from maskunet_platform.config.tracking import TrackingSection

# Param names that may carry credentials are never logged, whatever their value.
SECRET_NAME = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key|private)", re.I)
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
RUN_NAME_TAG = "maskunet.run_name"
FINGERPRINT_TAG = "maskunet.config_fingerprint"  # see runs.config_fingerprint
log = logging.getLogger(__name__)


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


def start_or_resume_run(job: JobConfig, run_name: str, fingerprint: Optional[str] = None,
                        reopen: bool = False) -> TrackingTarget:
    """The unfinished MLflow run of this Ray run name (a resume), else a new run. With `reopen`
    (extending a finished run) the newest run of that name is set running again."""
    from mlflow import MlflowClient

    uri = tracking_uri(job.tracking)
    client = MlflowClient(uri)
    experiment = experiment_id(client, job.tracking, uri)
    unfinished = "" if reopen else " and attributes.status != 'FINISHED'"
    found = client.search_runs([experiment], f"tags.`{RUN_NAME_TAG}` = '{run_name}'{unfinished}",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        if found[0].info.status != "RUNNING":
            client.update_run(found[0].info.run_id, status="RUNNING")
        return TrackingTarget(uri, found[0].info.run_id, experiment)
    tags = {RUN_NAME_TAG: run_name, "maskunet.base_model": job.model.base,
            "maskunet.data_source": job.data.source, **job.tracking.tags}
    if fingerprint:
        tags[FINGERPRINT_TAG] = fingerprint
    run = client.create_run(experiment, run_name=run_name, tags=tags)
    params = flatten_params(job)
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return TrackingTarget(uri, run.info.run_id, experiment)


class WorkerTracker:
    """Metric logging from inside a Ray worker (enabled on rank 0 only), never blocking a step.

    `log_metrics` only appends to a bounded buffer; a background thread sends the batches
    in order. While the server is slow or unreachable the training loop does not wait: the
    thread warns once, retries with capped backoff and catches up when the server answers
    again (timestamps are those of the step, not of the upload). When the buffer is full
    the oldest batch is dropped and counted. `close()` flushes for at most a timeout.
    """

    def __init__(self, target: Optional[dict], enabled: bool, settings: Optional[TrackingSection] = None):
        self.enabled = bool(target) and enabled
        self.dropped = 0
        if not self.enabled:
            return
        settings = settings or TrackingSection()
        self.flush_timeout_s = settings.flush_timeout_s
        send = metric_sender(target["tracking_uri"], target["run_id"], settings.request_timeout_s)
        self._queue = MetricQueue(send, settings.buffer_batches)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            self._queue.put(metrics, step)

    def close(self, timeout_s: Optional[float] = None) -> bool:
        """Flush buffered metrics for up to `timeout_s` (default tracking.flush_timeout_s);
        True when everything was delivered."""
        if not self.enabled:
            return True
        self.enabled = False
        delivered = self._queue.close(self.flush_timeout_s if timeout_s is None else timeout_s)
        self.dropped = self._queue.dropped
        return delivered


def metric_sender(uri: str, run_id: str, timeout_s: float) -> Callable[[list], None]:
    """A function sending one list of mlflow Metric entities, one attempt per call.

    For an HTTP tracking server the request goes out once, with a timeout: the MLflow client
    would otherwise retry a refused connection with exponential backoff for minutes inside a
    single call. Other stores (the embedded sqlite one) go through MlflowClient.
    """
    from mlflow import MlflowClient

    if not uri.startswith(("http://", "https://")):
        client = MlflowClient(uri)
        return lambda batch: client.log_batch(run_id, metrics=batch)
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    endpoint = "/api/2.0/mlflow/runs/log-batch"  # MLflow's REST API

    def send(batch: list) -> None:
        body = message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in batch]))
        response = http_request(get_default_host_creds(uri), endpoint, "POST", max_retries=0,
                                timeout=timeout_s, json=json.loads(body))
        verify_rest_response(response, endpoint)

    return send


class MetricQueue:
    """Bounded FIFO of metric batches drained by one daemon thread (see WorkerTracker)."""

    MAX_METRICS_PER_REQUEST = 1000  # MLflow's log-batch limit
    RETRY_MAX_S = 30.0

    def __init__(self, send: Callable[[list], None], capacity: int):
        self._send, self._capacity = send, capacity
        self._batches: deque[list] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False  # close() timed out: stop retrying
        self._failing_since: Optional[float] = None
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="maskunet-mlflow-metrics", daemon=True)
        self._thread.start()

    def put(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"]
        with self._cond:
            if len(self._batches) >= self._capacity:
                self._batches.popleft()
                self._count_drop()
            self._batches.append(batch)
            self._cond.notify()

    def _count_drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            log.warning("MLflow metric buffer full (%d batches): dropped the oldest, %d dropped so far",
                        self._capacity, self.dropped)

    def _take(self) -> Optional[list]:
        """Oldest batches merged up to one request's size; None once closed and empty."""
        with self._cond:
            while not self._batches and not self._closing:
                self._cond.wait()
            merged: list = []
            while self._batches and len(merged) + len(self._batches[0]) <= self.MAX_METRICS_PER_REQUEST:
                merged.extend(self._batches.popleft())
            if not merged and self._batches:  # a single oversized batch goes alone
                merged = self._batches.popleft()
            return merged or None

    def _run(self) -> None:
        delay = 1.0
        while (batch := self._take()) is not None:
            while True:
                try:
                    self._send(batch)
                except Exception as e:  # any failure of the tracking server: keep training, retry
                    if self._abandoned:
                        return
                    self._on_failure(e, delay)
                    with self._cond:
                        self._cond.wait(timeout=delay)  # close() wakes it to retry at once
                    delay = min(delay * 2, self.RETRY_MAX_S)
                    continue
                if self._failing_since is not None:
                    log.warning("MLflow tracking is reachable again after %.0fs: sending buffered metrics",
                                time.monotonic() - self._failing_since)
                    self._failing_since = None
                delay = 1.0
                break

    def _on_failure(self, error: Exception, delay: float) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("MLflow tracking unavailable (%s): training continues, metrics are buffered "
                        "and retried", _one_line(error))
        else:
            log.debug("MLflow tracking still unavailable, next retry in %.0fs", delay)

    def close(self, timeout_s: float) -> bool:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            with self._cond:
                self._abandoned = True
                left = sum(len(b) for b in self._batches)
            log.warning("MLflow tracking: %d buffered metric values not delivered within %.0fs", left, timeout_s)
            return False
        if self.dropped:
            log.warning("MLflow tracking: %d metric batches were dropped while the buffer was full", self.dropped)
        return True


def _one_line(error: Exception) -> str:
    text = URL_USERINFO.sub("***@", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def start_command_run(section: TrackingSection, run_name: str, kind: str, params: dict) -> TrackingTarget:
    """A new MLflow run for a command other than training (pretrain-base, bench), with its
    settings as params (secret-looking names dropped)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    uri = tracking_uri(section)
    client = MlflowClient(uri)
    experiment = experiment_id(client, section, uri)
    run = client.create_run(experiment, run_name=run_name, tags={"maskunet.kind": kind, **section.tags})
    items = [Param(k, str(v)[:6000]) for k, v in params.items() if not SECRET_NAME.search(k)]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return TrackingTarget(uri, run.info.run_id, experiment)


def command_tracking(experiment: str, uri: Optional[str], enabled: bool) -> TrackingSection:
    """The tracking settings of a command's --tracking-uri / --no-tracking options."""
    return TrackingSection(enabled=enabled, tracking_uri=uri, experiment=experiment)
