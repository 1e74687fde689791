"""Rehearse the SD1.5 cluster job end to end on CPU, on real local services.

    .venv/bin/python scripts/rehearse_sd15.py [--work /tmp/maskunet-rehearsal] [--steps 6]

Runs `jobs/sd15-laion-art.yaml` itself with only these overrides: the base is a local folder
with the exact SD1.5 architecture (random weights, real component configs, built offline),
the data is laion-art-schema parquet laid out like the Hub dataset (data/train-*.parquet next
to data/test-*.parquet), 2 CPU workers (gloo) in bf16, a handful of steps at 64x64, eval and
sample sizes cut to match, checkpoints on a moto S3 server and tracking on a real MLflow
server (artifacts on that S3). It trains, checkpoints, has a training worker SIGKILLed after
the first checkpoint and resumes, evaluates in a Ray task (not the driver), registers a model
version, and loads that version in a fresh process. Prints the evidence; exits 1 on failure.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixtures: the same service helpers the tests use

from tests.fixtures.mlflow_server import start_mlflow_server  # noqa: E402
from tests.fixtures.services import free_port, stop_process_group, wait_until_up  # noqa: E402

BUCKET = "rehearsal"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_services(work: Path) -> list[subprocess.Popen]:
    s3_port, mlflow_port = free_port(), free_port()
    s3_url, mlflow_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{mlflow_port}"
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until_up(s3_url + "/moto-api/", moto, "moto server", 60)
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=s3_url)
    import boto3

    boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket=BUCKET)
    mlflow = start_mlflow_server(work, mlflow_port, artifacts=f"s3://{BUCKET}/mlflow", timeout=180)
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
    print(f"services: moto S3 {s3_url}, MLflow {mlflow_url} (artifacts s3://{BUCKET}/mlflow)")
    return [moto, mlflow]


def prepare_inputs(work: Path) -> tuple[Path, Path]:
    from maskunet.sd15 import save_sd15_random_base
    from maskunet_platform.data.sample import write_sample

    base = work / "sd15-base"
    if not (base / "model_index.json").exists():
        started = time.perf_counter()
        save_sd15_random_base(base)
        print(f"base: SD1.5 architecture, random fp16 weights, built in {time.perf_counter() - started:.0f} s")
    data = work / "laion-art" / "data"
    if not data.exists():
        write_sample(str(data), rows=192, shards=2, seed=0)
        test = work / "test-split"
        write_sample(str(test), rows=48, shards=1, seed=1)
        for i, f in enumerate(sorted(test.glob("*.parquet"))):
            f.rename(data / f"test-{i:05d}-of-00001.parquet")
        shutil.rmtree(test)
    print(f"data: {sorted(p.name for p in data.iterdir())}")
    return base, data


def overrides(base: Path, data: Path, steps: int) -> list[str]:
    every = max(1, steps // 2)
    return [f"model.base={base}", "model.revision=null", f"data.source={data}", "data.resolution=64",
            "train.num_workers=2", "train.use_gpu=false", "train.backend=gloo", "train.cpus_per_worker=1",
            "train.precision=bf16", f"train.steps={steps}", f"train.checkpoint_every={every}", "train.log_every=1",
            f"train.storage_path=s3://{BUCKET}/runs", "train.eval.rows=16", "train.eval.batch_size=4",
            "train.samples.num_inference_steps=2", "train.samples.prompts=[a red circle, a blue square]"]


def worker_pids() -> list[int]:
    import psutil

    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if " ".join(p.info["cmdline"] or []).startswith("ray::RayTrainWorker")]


def kill_a_worker_after_first_checkpoint(job, stop: threading.Event, killed: list) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    prefix = f"{BUCKET}/runs/{job.train.run_name or job.name}"
    while not stop.is_set():
        try:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(prefix, refresh=True)]
        except FileNotFoundError:
            names = []
        ready = [n for n in names if n.startswith("checkpoint_step") and _complete(fs, f"{prefix}/{n}", job)]
        if ready and (pids := worker_pids()):
            os.kill(pids[-1], signal.SIGKILL)
            killed.append((pids[-1], ready[0], time.strftime("%H:%M:%S")))
            return
        time.sleep(1)


def _complete(fs, folder: str, job) -> bool:
    """Every rank has finished uploading this checkpoint (its completion marker is there)."""
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(folder, refresh=True)}
    return all(f".complete_rank{rank:05d}" in names for rank in range(job.train.num_workers))


def load_in_fresh_process(model_uri: str) -> dict:
    code = ("import json, mlflow, pandas as pd, base64, io; from PIL import Image;"
            f"m = mlflow.pyfunc.load_model({model_uri!r});"
            "out = m.predict(pd.DataFrame({'prompt': ['a red circle'], 'seed': [0]}), "
            "params={'num_inference_steps': 1});"
            "img = Image.open(io.BytesIO(base64.b64decode(out['image_png_b64'][0])));"
            "print(json.dumps({'flavors': sorted(m.metadata.flavors), 'image': img.size}))")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1], "image": None}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - started)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/maskunet-rehearsal")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    procs = start_services(work)
    try:
        return rehearse(work, args.steps)
    finally:
        import ray

        ray.shutdown()
        for proc in procs:
            stop_process_group(proc)


def rehearse(work: Path, steps: int) -> int:
    from mlflow import MlflowClient

    from maskunet_platform.config import load_job
    from maskunet_platform.train.launcher import train_job

    base, data = prepare_inputs(work)
    spec = REPO / "jobs" / "sd15-laion-art.yaml"
    job = load_job(spec, overrides(base, data, steps))
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, args=(job, stop, killed), daemon=True)
    killer.start()
    started = time.perf_counter()
    try:
        outcome = train_job(job, job_yaml=spec.read_text())
    finally:
        stop.set()
    total = time.perf_counter() - started
    client = MlflowClient()
    resumed = [m.value for m in client.get_metric_history(outcome.mlflow_run_id, "resumed_from_step")]
    run = client.get_run(outcome.mlflow_run_id)
    artifacts = sorted(a.path for a in client.list_artifacts(outcome.mlflow_run_id))
    model_uri = f"models:/{job.tracking.registered_model_name}/{outcome.model_version}"
    loaded = load_in_fresh_process(model_uri)
    report = {
        "killed_worker": killed, "final_step": outcome.metrics.get("step"), "resumed_from_step": sorted(set(resumed)),
        "checkpoint": outcome.checkpoint_path, "eval_ran_in": outcome.post_training_where,
        "driver_pid": os.getpid(), "eval": {k: round(v, 5) for k, v in (outcome.eval or {}).items()},
        "run_status": run.info.status, "artifacts": artifacts, "registered": model_uri, "fresh_process_load": loaded,
        "timings_s": {k: round(v, 1) for k, v in outcome.timings.items()}, "total_s": round(total),
    }
    print(json.dumps(report, indent=2))
    ok = (killed and outcome.metrics.get("step") == steps and any(r > 0 for r in resumed)
          and str(os.getpid()) not in outcome.post_training_where and run.info.status == "FINISHED"
          and loaded["image"] == [512, 512])
    print("REHEARSAL " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
