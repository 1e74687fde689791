"""After training: paired held-out eval, PNG artifacts, MLflow logging and model registration."""
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from maskunet import MaskGenerator
from maskunet_platform.config import JobConfig
from maskunet_platform.train.base import load_frozen_base
from maskunet_platform.train.tracking import log_metrics

log = logging.getLogger(__name__)


def eval_batches(job: JobConfig, base_location: str, data_uri: Optional[str] = None, split: str = "holdout"):
    """Held-out batches in a stable order (the same rows for every evaluation)."""
    from maskunet_platform.data.pipeline import build_dataset

    data = job.data.model_copy(update={"deterministic": True, "flip": False, "crop": "center",
                                       **({"source": data_uri} if data_uri else {})})
    ds = build_dataset(data, base_location, split=split, counter_name="maskunet-eval-drops")
    return ds.limit(job.train.eval.rows).iter_torch_batches(batch_size=job.train.eval.batch_size)


def run_paired_eval(job: JobConfig, base_location: str, generator_dir: str, data_uri: Optional[str] = None,
                    split: str = "holdout"):
    from maskunet_platform.train.evaluate import paired_eval

    device = "cuda" if job.train.use_gpu and torch.cuda.is_available() else "cpu"
    base = load_frozen_base(job.model.model_copy(update={"base": base_location}), device)
    generator = MaskGenerator.from_pretrained(generator_dir)
    cfg = job.train.eval
    return paired_eval(base, generator, eval_batches(job, base_location, data_uri, split), cfg.rows,
                       cfg.timestep_buckets, cfg.seed)


def finalize_run(job: JobConfig, outcome, target, base_location: str, job_yaml: Optional[str]) -> None:
    """Fill `outcome.eval`, and with tracking on: artifacts, eval metrics, a registered model version."""
    from maskunet_platform.train.artifacts import sample_grid_png, sparsity_heatmap_png

    started = time.perf_counter()
    result = run_paired_eval(job, base_location, outcome.generator_dir)
    outcome.eval = result.metrics()
    outcome.timings["eval"] = time.perf_counter() - started
    if target is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient(target.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="maskunet-artifacts-") as tmp:
        tmp = Path(tmp)
        client.log_artifacts(target.run_id, outcome.generator_dir, "mask_generator")
        if job_yaml:
            (tmp / "job.yaml").write_text(job_yaml)
            client.log_artifact(target.run_id, str(tmp / "job.yaml"))
        if job.tracking.log_heatmap:
            client.log_artifact(target.run_id, str(sparsity_heatmap_png(result, tmp / "sparsity_heatmap.png")))
        if job.tracking.log_samples:
            s = job.train.samples
            grid = sample_grid_png(base_location, outcome.generator_dir, s.prompts, tmp / "samples_base_vs_masked.png",
                                   s.num_inference_steps, s.guidance_scale, s.seed, s.resolution or job.data.resolution)
            client.log_artifact(target.run_id, str(grid))
        outcome.timings["artifacts"] = time.perf_counter() - started - outcome.timings["eval"]
        log_metrics(client, target.run_id, outcome.eval, int(outcome.metrics.get("step", 0)))
        if job.tracking.register_model:
            outcome.model_version = _register(job, outcome, target, base_location, tmp)
    outcome.timings["total_finalize"] = time.perf_counter() - started
    client.set_terminated(target.run_id, "FINISHED")
    outcome.artifact_uri = client.get_run(target.run_id).info.artifact_uri


def _register(job: JobConfig, outcome, target, base_location: str, work_dir: Path) -> str:
    from maskunet_platform.train.registry import log_and_register

    s = job.train.samples
    tags = {"run_id": target.run_id, "data_source": job.data.source, "base_model": job.model.base,
            "ray_run_name": outcome.run_name}
    version = log_and_register(target.run_id, target.tracking_uri, job.tracking.registered_model_name,
                               base_location, outcome.generator_dir, tags,
                               {"num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale},
                               work_dir)
    return str(version.version)
