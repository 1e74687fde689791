"""Post-training work as a Ray task on the training resources: paired held-out eval, the
sparsity heatmap and the base-vs-masked sample grid.

Nothing heavy runs in the driver, which may be a laptop connected with `ray://` or a CPU
head node: the task takes the resources of one training worker (a GPU when training used
GPUs), loads the base itself (where the workers load it) in the training precision with the
mask generator in fp32, and returns the metrics and PNG bytes.
"""
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import ray
import torch

from maskunet_platform.config import JobConfig
from maskunet_platform.train.evaluate import EvalResult


@dataclass
class GeneratorSource:
    """Where the task gets the mask generator: a training checkpoint (only its generator/
    folder is downloaded, on the worker) or a driver-local folder shipped by value."""

    checkpoint: Any = None  # ray.train.Checkpoint
    files: Optional[dict[str, bytes]] = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> "GeneratorSource":
        from maskunet.baselines import weights_kind

        folder = Path(folder)
        try:
            weights_kind(folder)  # a mask generator, or a baseline's LoRA / U-Net export
        except ValueError as e:
            raise FileNotFoundError(str(e)) from None
        return cls(files={p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})

    def materialize(self, dest: Path) -> Path:
        if self.checkpoint is not None:
            from maskunet_platform.train.checkpoint import download_generator

            return download_generator(self.checkpoint, dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in (self.files or {}).items():
            (dest / name).write_bytes(data)
        return dest


@dataclass
class PostTrainingResult:
    eval: EvalResult
    heatmap_png: Optional[bytes] = None
    samples_png: Optional[bytes] = None
    shapes: Any = None  # bench.shapes.benchmark.ShapesReport
    subject: Any = None  # subject.report.SubjectReport (subject jobs)
    device: str = "cpu"
    where: str = ""  # node and process the task ran in
    timings: dict = field(default_factory=dict)  # stage -> seconds, measured in the task


def task_resources(job: JobConfig) -> dict:
    """One training worker's resources: the task runs where training ran."""
    return {"num_cpus": job.train.cpus_per_worker, "num_gpus": 1 if job.train.use_gpu else 0}


def run_post_training(job: JobConfig, generator: GeneratorSource, data_uri: Optional[str] = None,
                      split: str = "holdout", heatmap: bool = False, samples: bool = False,
                      shapes: bool = False) -> PostTrainingResult:
    """Run the post-training task on the cluster and wait for it (Ray must be connected).
    `shapes`: also the shapes benchmark, when `train.eval.shapes.prompts` asks for it."""
    # DEFAULT scheduling: called from a sweep trial, the task must not be captured by the
    # trial's one-CPU placement group (it runs after the trial's Train workers let go of theirs).
    task = ray.remote(_post_training).options(**task_resources(job), max_retries=1, scheduling_strategy="DEFAULT")
    return ray.get(task.remote(job.model_dump(mode="json"), generator, data_uri, split, heatmap, samples, shapes,
                               time.time()))


def _post_training(job_data: dict, generator: GeneratorSource, data_uri: Optional[str], split: str,
                   heatmap: bool, samples: bool, shapes: bool, submitted: float = 0.0) -> PostTrainingResult:
    # From submission to here: a worker process, and this module's imports (torch, diffusers).
    timings: dict[str, float] = {"start task": max(0.0, time.time() - submitted)} if submitted else {}
    from maskunet_platform.train.artifacts import sample_grid_png, sparsity_heatmap_png
    from maskunet_platform.train.base import DTYPES, resolve_base
    from maskunet_platform.train.finalize import run_paired_eval

    job = JobConfig.model_validate(job_data)
    device = "cuda" if job.train.use_gpu and torch.cuda.is_available() else "cpu"
    dtype = DTYPES[job.train.precision]
    base_location = resolve_base(job.model)  # where this node's workers loaded it from
    with tempfile.TemporaryDirectory(prefix="maskunet-post-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        generator_dir = generator.materialize(tmp / "generator")
        result = run_paired_eval(job, base_location, str(generator_dir), data_uri, split, device, dtype)
        timings["eval"] = time.perf_counter() - started
        where = f"node {ray.get_runtime_context().get_node_id()[:12]} pid {os.getpid()}"
        out = PostTrainingResult(result, device=device, where=where, timings=timings)
        if heatmap:
            out.heatmap_png = sparsity_heatmap_png(result, tmp / "heatmap.png").read_bytes()
        if samples:
            started = time.perf_counter()
            s = job.train.samples
            grid = sample_grid_png(base_location, generator_dir, s.prompts, tmp / "samples.png", s.num_inference_steps,
                                   s.guidance_scale, s.seed, s.resolution or job.data.resolution, device, dtype)
            out.samples_png = grid.read_bytes()
            timings["samples"] = time.perf_counter() - started
        if shapes and job.train.eval.shapes.prompts:
            started = time.perf_counter()
            out.shapes = shapes_benchmark(job, base_location, generator_dir, device, dtype)
            timings["shapes benchmark"] = time.perf_counter() - started
        if job.data.subject is not None:
            from maskunet_platform.subject.report import subject_report

            started = time.perf_counter()
            out.subject = subject_report(job, base_location, generator_dir, device, dtype)
            timings["subject report"] = time.perf_counter() - started
    return out


def shapes_benchmark(job: JobConfig, base_location: str, generator_dir: Path, device: str, dtype):
    """Base vs masked on the held-out shapes prompts, paired (same prompts and seeds)."""
    from maskunet import MaskUNetPipeline
    from maskunet_platform.bench.shapes.benchmark import ShapesBenchSettings, run_shapes_benchmark

    s = job.train.eval.shapes
    pipe = MaskUNetPipeline.from_base(base_location, masks=str(generator_dir), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    settings = ShapesBenchSettings(prompts=s.prompts, seeds=s.seeds, steps=s.steps, guidance=s.guidance,
                                   batch_size=s.batch_size)
    return run_shapes_benchmark(pipe, settings, compare=True)
