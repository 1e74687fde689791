"""After training: paired held-out eval, PNG artifacts, MLflow logging and model registration."""
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from maskunet_platform.config import JobConfig
from maskunet_platform.train.base import load_frozen_base, resolve_base
from maskunet_platform.train.tracking import log_metrics

log = logging.getLogger(__name__)
# MLflow artifact folder of the trained weights per train.method.
ARTIFACT_NAMES = {"masks": "mask_generator", "lora": "lora", "full": "unet"}
SUBJECT_REPORT = "subject_report.json"


def eval_batches(job: JobConfig, base_location: str, data_uri: Optional[str] = None, split: str = "holdout"):
    """Held-out batches in a stable order (the same rows for every evaluation)."""
    from maskunet_platform.data.pipeline import iter_local_batches

    data = job.data.model_copy(update={"deterministic": True, "flip": False, "crop": "center",
                                       **({"source": data_uri} if data_uri else {})})
    return iter_local_batches(data, base_location, split=split, rows=job.train.eval.rows,
                              batch_size=job.train.eval.batch_size, counter_name="maskunet-eval-drops")


def run_paired_eval(job: JobConfig, base_location: str, generator_dir: str, data_uri: Optional[str] = None,
                    split: str = "holdout", device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Paired eval in this process (called inside the post-training task)."""
    from maskunet_platform.train.evaluate import paired_eval

    from maskunet import MaskGenerator
    from maskunet.baselines import find_weights
    from maskunet_platform.train.methods import paired_switch

    # Masks, or a baseline's LoRA / U-Net export; whether it fits the base was checked where the
    # weights came in (a command's --weights, a run's own base).
    kind, generator_dir = find_weights(generator_dir)
    base = load_frozen_base(job.model.model_copy(update={"base": base_location}), device, dtype)
    generator = MaskGenerator.from_pretrained(generator_dir) if kind == "masks" else \
        paired_switch(kind, base.unet, generator_dir)
    cfg = job.train.eval
    return paired_eval(base, generator, eval_batches(job, base_location, data_uri, split), cfg.rows,
                       cfg.timestep_buckets, cfg.seed)


def finalize_run(job: JobConfig, outcome, target, checkpoint, job_yaml: Optional[str], progress=None,
                 post=None) -> None:
    """Fill `outcome.eval` and with tracking on: artifacts, eval metrics and a registered model
    version. `post`: the result rank 0 made after training (else a post-training task runs
    now, on the training resources); `progress` gets the stages."""
    from maskunet_platform.console.progress import Progress
    from maskunet_platform.train.post_training import (GeneratorSource, post_training_request, post_training_stage,
                                                       run_post_training, stage_parts)

    progress = progress or Progress()
    tracking = target is not None
    started = time.perf_counter()
    subject, given = job.data.subject is not None, post is not None
    if post is None:
        with progress.stage(post_training_stage(job, tracking)) as stage:
            request = post_training_request(job, tracking)
            post = run_post_training(job, GeneratorSource(checkpoint=checkpoint), **asdict(request))
            stage.parts = stage_parts(post)
    outcome.eval = post.eval.metrics()
    for report in (post.shapes, post.subject):
        if report is not None:
            outcome.eval.update(report.metrics())
    if subject and post.subject is None:  # report off, or no shape seen in the instance images
        outcome.eval["subject/items"] = 0.0
    if post.subject is not None:  # beside the exported weights, tracking or not
        report_dir = Path(outcome.generator_dir).parent
        (report_dir / SUBJECT_REPORT).write_text(json.dumps(post.subject.to_json(), indent=2))
        (report_dir / SUBJECT_REPORT.replace(".json", ".png")).write_bytes(post.subject.grid_png)
    outcome.post_training_where = post.where
    outcome.timings.update({f"{k} ({post.device})": v for k, v in post.timings.items() if k != "start task"})
    # The post-training work's seconds: in rank 0 (its own timings), or this task's wall.
    outcome.timings["post_training"] = sum(post.timings.values()) if given else time.perf_counter() - started
    if not tracking:
        return
    with progress.stage("MLflow log" + (" + register" if job.tracking.register_model else "")):
        _log_and_register(job, outcome, target, post, job_yaml)


def _log_and_register(job: JobConfig, outcome, target, post, job_yaml: Optional[str]) -> None:
    from mlflow import MlflowClient

    started = time.perf_counter()
    client = MlflowClient(target.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="maskunet-artifacts-") as tmp:
        tmp = Path(tmp)
        client.log_artifacts(target.run_id, outcome.generator_dir, ARTIFACT_NAMES[job.train.method])
        files = {"job.yaml": job_yaml and job_yaml.encode(), "sparsity_heatmap.png": post.heatmap_png,
                 "samples_base_vs_masked.png": post.samples_png,
                 "shapes_benchmark.png": post.shapes and post.shapes.grid_png,
                 "shapes_benchmark.json": post.shapes and json.dumps(post.shapes.to_json(), indent=2).encode(),
                 "subject_report.png": post.subject and post.subject.grid_png,
                 "subject_report.json": post.subject and json.dumps(post.subject.to_json(), indent=2).encode()}
        for name, data in files.items():
            if data:
                (tmp / name).write_bytes(data)
                client.log_artifact(target.run_id, str(tmp / name))
        log_metrics(client, target.run_id, outcome.eval, int(outcome.metrics.get("step", 0)))
        if job.tracking.register_model:
            outcome.model_version = _register(job, outcome, target, post, tmp)
    outcome.timings["log_and_register"] = time.perf_counter() - started
    client.set_terminated(target.run_id, "FINISHED")
    outcome.artifact_uri = client.get_run(target.run_id).info.artifact_uri


def _register(job: JobConfig, outcome, target, post, work_dir: Path) -> str:
    from maskunet_platform.registry.register import log_and_register, version_tags

    s = job.train.samples
    version = log_and_register(target.run_id, target.tracking_uri, job.tracking.registered_model_name,
                               resolve_base(job.model), outcome.generator_dir,
                               version_tags(job, target.run_id, outcome.run_name, post),
                               {"num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale},
                               work_dir)
    return str(version.version)
