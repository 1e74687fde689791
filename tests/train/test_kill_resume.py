"""A worker process SIGKILLed mid-run: the run resumes from its last checkpoint (on S3, moto)
and finishes with a continuous step count; re-running the same config finds the unfinished run
(resume), and `--resume RUN` with more steps continues it."""
import os
import signal
import threading
import time

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.long]
STEPS, EVERY = 20, 10


def _train_worker_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::RayTrainWorker"):
            pids.append(proc.info["pid"])
    return pids


def _checkpoint_steps(fs, prefix: str) -> list[int]:
    try:
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(prefix, refresh=True)]
    except FileNotFoundError:
        return []
    return sorted(int(n.removeprefix("checkpoint_step")) for n in names if n.startswith("checkpoint_step"))


def _logged_steps(client, run_id) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "train/loss")] if run_id else []


def _run_id(client, job):
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return runs[0].info.run_id if runs else None


def test_worker_kill_resumes_from_s3_checkpoint(s3, ray_local, mlflow_server, make_job):
    import s3fs
    from mlflow import MlflowClient

    from maskunet import MaskGenerator
    from maskunet_platform.train.launcher import train_job
    from maskunet_platform.train.runs import plan_run

    bucket = s3.create_bucket("maskunet-ckpt")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint_url})
    overrides = [f"train.storage_path=s3://{bucket}/runs", f"train.checkpoint_every={EVERY}", "train.log_every=5",
                 "train.max_failures=2"]
    job = make_job("resume", f"train.steps={STEPS}", *overrides, tracking_uri=mlflow_server.tracking_uri)
    plan = plan_run(job)
    assert plan.action == "new" and plan.run_name.startswith("resume-"), plan
    run_dir = f"{bucket}/runs/{plan.run_name}"
    client = MlflowClient(mlflow_server.tracking_uri)
    outcome, errors = {}, []

    def fit():
        try:
            outcome["first"] = train_job(job, finalize=False)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    thread = threading.Thread(target=fit)
    thread.start()
    # Kill once a log step after the first checkpoint is in MLflow: by then Ray Train's controller
    # has registered that checkpoint (a checkpoint uploaded but not yet registered is not resumable).
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        logged = _logged_steps(client, _run_id(client, job))
        if logged and max(logged) >= EVERY + 5:
            break
        time.sleep(0.3)
    seen_at_kill = _checkpoint_steps(fs, run_dir)
    assert seen_at_kill and thread.is_alive(), f"no checkpoint in S3 before the end ({errors})"
    victims = _train_worker_pids()
    assert len(victims) == 2, victims
    os.kill(victims[-1], signal.SIGKILL)  # a real process kill, not an exception
    thread.join(timeout=400)
    assert not thread.is_alive() and not errors, errors
    first = outcome["first"]

    assert first.metrics["step"] == STEPS
    resumed_from = first.metrics["resumed_from_step"]
    assert resumed_from >= max(seen_at_kill) and resumed_from % EVERY == 0 and resumed_from > 0
    # Steps are continuous: every log step is there, and none was lost beyond one checkpoint interval.
    logged = _logged_steps(client, first.mlflow_run_id)
    assert sorted(set(logged)) == list(range(5, STEPS + 1, 5))
    assert set(_train_worker_pids()).isdisjoint(victims)
    _assert_random_streams_continue(client, first.mlflow_run_id, resumed_from)

    # Each rank's DeepSpeed shard and the consolidated generator are in the S3 checkpoint.
    final = f"{run_dir}/checkpoint_step{STEPS:08d}"
    fs.invalidate_cache()
    files = [p.rsplit("/", 1)[-1] for p in fs.find(final)]
    assert any(f.startswith("zero_pp_rank_0_") for f in files) and any(f.startswith("zero_pp_rank_1_") for f in files)
    assert "diffusion_pytorch_model.safetensors" in files and "train_state.json" in files
    exported = MaskGenerator.from_pretrained(first.generator_dir)
    assert sum(p.numel() for p in exported.parameters()) > 0

    # Not finalized, so unfinished: re-running the same config resumes this run (a cluster retry)...
    again = plan_run(job)
    assert (again.action, again.run_name) == ("resume", first.run_name) and f"from step {STEPS}" in again.why
    # ...and `--resume RUN` with more steps picks up the latest checkpoint and continues the step count.
    longer = make_job("resume", f"train.steps={STEPS + 4}", *overrides, "train.log_every=2",
                      tracking_uri=mlflow_server.tracking_uri)
    assert plan_run(longer).run_name != first.run_name  # a changed config alone would be a new run
    more = train_job(longer, plan=plan_run(longer, resume=first.run_name), finalize=False)
    assert more.metrics["resumed_from_step"] == STEPS and more.metrics["step"] == STEPS + 4
    assert more.mlflow_run_id == first.mlflow_run_id  # the unfinished MLflow run continues
    assert max(_logged_steps(client, more.mlflow_run_id)) == STEPS + 4
    _assert_random_streams_continue(client, more.mlflow_run_id, STEPS)


def _assert_random_streams_continue(client, run_id: str, resumed_from: int) -> None:
    """Each rank logs a fingerprint of its random streams at log steps, and again right after a
    restore: a resumed rank must hold exactly the state the interrupted run had at that step
    (so it draws what an uninterrupted run would have), and ranks never share a stream."""
    ranks = []
    for rank in (0, 1):
        by_step: dict[int, list[float]] = {}
        for m in client.get_metric_history(run_id, f"rng/fingerprint_rank{rank}"):
            by_step.setdefault(m.step, []).append(m.value)
        assert len(by_step[resumed_from]) >= 2, (rank, by_step)  # at the checkpoint, and after the restore
        assert all(len(set(values)) == 1 for values in by_step.values()), (rank, by_step)
        assert len({values[0] for values in by_step.values()}) == len(by_step)  # no step replays another
        ranks.append(by_step)
    assert all(ranks[0][step] != ranks[1][step] for step in ranks[0])
