"""The console's building blocks without a command: throttled plain progress, heartbeats, the
summary layout, one-line errors and the run fingerprint."""
import io
import time

import pytest

from maskunet_platform.config import ConfigError, load_job
from maskunet_platform.console.errors import one_line
from maskunet_platform.console.progress import PlainProgress
from maskunet_platform.console.summary import Summary
from maskunet_platform.train.runs import config_fingerprint
from tests.train.conftest import LOCAL_JOB


def test_plain_progress_prints_a_line_per_interval_never_a_redraw():
    stream = io.StringIO()
    progress = PlainProgress(stream, interval_s=0.2, heartbeat_s=60)
    steps = progress.steps("training", 100)
    started = time.monotonic()
    for step in range(1, 101):
        steps.update(step, loss=1.0 / step, sparsity=0.25, images_per_s=40.0)
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    steps.done()
    progress.close()
    lines = stream.getvalue().splitlines()
    step_lines = [line for line in lines if "training: step" in line]
    assert "\r" not in stream.getvalue()
    assert 3 <= len(step_lines) <= elapsed / 0.2 + 2, lines  # the first, one per 0.2 s, the last: not 100
    assert "step 1/100" in step_lines[0] and "step 100/100" in step_lines[-1]
    assert "loss 0.0100" in step_lines[-1] and "sparsity 25.0%" in step_lines[-1] and "40.0 img/s" in step_lines[-1]
    assert any("ETA" in line for line in step_lines[1:-1])
    assert "training done in" in lines[-1]


def test_plain_progress_heartbeat_during_a_long_stage():
    stream = io.StringIO()
    progress = PlainProgress(stream, interval_s=10, heartbeat_s=0.5)
    with progress.stage("evaluate"):
        time.sleep(1.6)
    progress.close()
    text = stream.getvalue()
    assert "evaluate: still running" in text and "evaluate done in" in text
    assert "evaluate" in progress.timings


def test_summary_aligns_rows_and_names_the_log():
    summary = Summary("maskunet data inspect: x", data={"rows_in": 3})
    summary.add("rows in:", 3).add("rows out:", 2).add("dropped:", "none").add("skipped:", None)
    lines = summary.render({"read": 1.25}, "/tmp/x.log")
    assert lines[1:] == ["rows in:  3", "rows out: 2", "dropped:  none", "time:     read 1.2s", "log:      /tmp/x.log"]


def test_one_line_errors_join_multi_line_messages():
    with pytest.raises(ConfigError) as e:
        load_job(LOCAL_JOB, ["train.lr=-1", "mask.tau=0"])
    text = one_line(e.value)
    assert "\n" not in text and "train.lr" in text and "mask.tau" in text


def test_fingerprint_follows_training_fields_only():
    base = config_fingerprint(load_job(LOCAL_JOB))
    for same in (["train.storage_path=/elsewhere", "train.log_every=1", "tracking.experiment=x", "name=other",
                  "train.eval.rows=8", "train.max_failures=0", "data.parallelism=3"],):
        assert config_fingerprint(load_job(LOCAL_JOB, same)) == base
    for changed in ("train.lr=0.03", "train.steps=61", "mask.tau=0.5", "data.source=/other", "train.seed=1"):
        assert config_fingerprint(load_job(LOCAL_JOB, [changed])) != base, changed


def test_rank0_progress_and_warnings_reach_the_driver_through_the_board(ray_local):
    import logging

    from maskunet_platform.console.train_progress import BoardClient, BoardWatcher, ProgressBoard

    stream = io.StringIO()
    progress = PlainProgress(stream, interval_s=0, heartbeat_s=60)
    board = ProgressBoard.remote()
    watcher = BoardWatcher(board, progress, total_steps=4).start()
    client = BoardClient(board, enabled=True)  # what rank 0 holds inside the worker
    client.forward_warnings("maskunet_platform.test_board")
    client.ready(resumed_step=0, setup_seconds=1.0)
    for step in (2, 4):
        client.step(step, {"train/loss": 1.5, "train/sparsity_realised": 0.1, "train/images_per_s": 8.0})
    logging.getLogger("maskunet_platform.test_board").warning("MLflow tracking unavailable (test)")
    client.ready(resumed_step=2, setup_seconds=1.0)  # a restarted worker group
    deadline = time.monotonic() + 30
    while "restarted" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.2)  # the watcher polls the board every 0.5 s
    watcher.stop(ok=True)
    progress.close()
    text = stream.getvalue()
    assert "start workers done" in text and "training: step 2/4" in text and "training: step 4/4" in text
    assert "warning: MLflow tracking unavailable (test)" in text
    assert "warning: a worker failed: the worker group restarted from step 2" in text
    assert BoardClient(board, enabled=False).board is None  # other ranks send nothing
    ray_local.kill(board)
