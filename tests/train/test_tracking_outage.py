"""Training-side MLflow logging survives a tracking-server outage: a real `mlflow server` is
stopped mid-logging and restarted on the same port and store. Logging calls return at once
and never raise; what was logged during the outage arrives after the restart."""
import logging
import time

import pytest

from maskunet_platform.config.tracking import TrackingSection
from maskunet_platform.train.tracking import WorkerTracker
from tests.fixtures.mlflow_server import start_mlflow_server
from tests.fixtures.services import free_port, stop_process_group

pytestmark = pytest.mark.slow
FAST = 0.05  # seconds: a logging call never waits for the server


def _log_timed(tracker: WorkerTracker, steps) -> float:
    slowest = 0.0
    for step in steps:
        started = time.perf_counter()
        tracker.log_metrics({"train/loss": float(step), "step": step}, step)
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def _logged_steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


def test_outage_degrades_to_a_warning_and_catches_up(tmp_path, caplog):
    from mlflow import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    try:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        settings = TrackingSection(request_timeout_s=2, flush_timeout_s=60)
        tracker = WorkerTracker({"tracking_uri": uri, "run_id": run_id}, enabled=True, settings=settings)
        assert _log_timed(tracker, range(1, 4)) < FAST
        deadline = time.monotonic() + 30
        while _logged_steps(client, run_id) != [1, 2, 3] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _logged_steps(client, run_id) == [1, 2, 3]

        stop_process_group(server)  # the outage
        with caplog.at_level(logging.WARNING, logger="maskunet_platform.train.tracking"):
            assert _log_timed(tracker, range(4, 9)) < FAST
            deadline = time.monotonic() + 15
            while "MLflow tracking unavailable" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "MLflow tracking unavailable" in caplog.text
            assert _log_timed(tracker, range(9, 11)) < FAST  # still not blocked mid-outage

            server = start_mlflow_server(tmp_path, port)  # back, same port and store
            started = time.perf_counter()
            assert tracker.close(), "buffered metrics were not delivered after the restart"
            assert time.perf_counter() - started < 30
        assert _logged_steps(client, run_id) == list(range(1, 11))
        assert tracker.dropped == 0
        assert "reachable again" in caplog.text
    finally:
        stop_process_group(server)


def test_full_buffer_drops_oldest_and_close_gives_up_in_time(caplog):
    # Nothing listens on this port: every send fails, as in an outage that never ends.
    target = {"tracking_uri": f"http://127.0.0.1:{free_port()}", "run_id": "0" * 32}
    tracker = WorkerTracker(target, enabled=True, settings=TrackingSection(buffer_batches=3, request_timeout_s=1))
    with caplog.at_level(logging.WARNING, logger="maskunet_platform.train.tracking"):
        assert _log_timed(tracker, [0]) < FAST
        deadline = time.monotonic() + 10
        while tracker._queue._batches and time.monotonic() < deadline:
            time.sleep(0.01)  # the sender took batch 0 and now retries it, taking nothing else
        assert _log_timed(tracker, range(1, 11)) < FAST
        started = time.perf_counter()
        assert not tracker.close(timeout_s=1.0)
        assert time.perf_counter() - started < 3
    # 10 more batches while one is in flight, 3 buffered: the oldest 7 were dropped and counted.
    assert tracker.dropped == 7
    assert "dropped the oldest" in caplog.text and "not delivered" in caplog.text
    tracker.log_metrics({"train/loss": 1.0}, 11)  # after close: a no-op, never an error
