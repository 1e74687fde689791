"""Post-training work on the training resources: paired held-out eval, the sparsity heatmap,
the base-vs-masked sample grid, the shapes benchmark (and a subject job's report).

Nothing heavy runs in the driver, which may be a laptop connected with `ray://` or a CPU
head node. A training run does it in its rank-0 worker once the final checkpoint is reported
(its imports are done and its device is free: no new process to start) and hands the result
to the driver through the run's progress board; anything else (a sweep trial, `maskunet eval`,
`compare`, a run whose worker had nothing left to train) runs it as a Ray task with one
training worker's resources. Either way the base is loaded anew (where the workers load it)
in the training precision with the mask generator in fp32.
"""
import logging
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

log = logging.getLogger(__name__)


@dataclass
class GeneratorSource:
    """Where the task gets the mask generator: a training checkpoint (only its generator/
    folder is downloaded, on the worker) or a driver-local folder shipped by value."""

    checkpoint: Any = None  # ray.train.Checkpoint
    files: Optional[dict[str, bytes]] = None
    folder: Optional[str] = None  # a folder on the node the work runs on (used in place)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "GeneratorSource":
        from maskunet.baselines import find_weights

        try:  # a mask generator, a baseline's LoRA / U-Net export, or a run's export folder
            _, folder = find_weights(folder)
        except ValueError as e:
            raise FileNotFoundError(str(e)) from None
        return cls(files={p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})

    def materialize(self, dest: Path) -> Path:
        if self.folder is not None:
            return Path(self.folder)
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


@dataclass(frozen=True)
class PostTrainingRequest:
    """What the post-training work of a run includes."""

    split: str = "holdout"
    heatmap: bool = False
    samples: bool = False
    shapes: bool = False


def take_post_training(board) -> Any:
    """The driver's side (board: console.train_progress.ProgressBoard): a PostTrainingResult, an
    error (str), or None if rank 0 put nothing or the board was lost (then the caller runs the
    post-training task)."""
    from ray import cloudpickle

    try:
        pickled = ray.get(board.take_result.remote())
    except ray.exceptions.RayActorError as e:  # e.g. its node was lost: nothing to take
        log.warning("progress board unavailable (%s); evaluating in a task", e)
        return None
    # In-cluster bytes rank 0 made moments ago, the same trust and format as any Ray task's return
    # value (which ray.get unpickles); nothing here is ever read from storage.
    return None if pickled is None else cloudpickle.loads(pickled)


# The post-training work's timings as the closing summary names them.
TASK_PARTS = {"start task": "start eval task", "eval": "evaluate"}


def stage_parts(post: PostTrainingResult) -> dict[str, float]:
    return {TASK_PARTS.get(name, name): seconds for name, seconds in post.timings.items()}


def eval_split(job: JobConfig) -> str:
    """The split paired evaluations read: a subject job holds nothing out, so the subject data itself."""
    return "all" if job.data.subject is not None else "holdout"


def post_training_request(job: JobConfig, tracking: bool) -> PostTrainingRequest:
    """What a finished run evaluates and renders (heatmap and samples only go to MLflow)."""
    return PostTrainingRequest(split=eval_split(job), shapes=True,
                               heatmap=tracking and job.tracking.log_heatmap and job.train.method == "masks",
                               samples=tracking and job.tracking.log_samples)


def post_training_stage(job: JobConfig, tracking: bool) -> str:
    """The console stage's name: what the post-training work does for this job."""
    samples = tracking and job.tracking.log_samples
    name = "evaluate" + (" + samples" if samples else "")
    name += " + shapes benchmark" if job.train.eval.shapes.prompts else ""
    subject = job.data.subject
    return name + (" + subject report" if subject is not None and subject.report.prompts else "")


def rank0_post_training(job: JobConfig, tracking: bool, board) -> dict:
    """`train_loop_config["post_training"]`: what rank 0 does after the final checkpoint, the
    console stage it opens, and the board its result goes to."""
    return {"request": post_training_request(job, tracking), "stage": post_training_stage(job, tracking),
            "board": board}


def post_train_in_worker(job_data: dict, request: PostTrainingRequest, board, generator_dir: str) -> None:
    """Rank 0, after the final checkpoint: the post-training work in this process, its result
    put on the driver's progress `board`.
    A failure goes to the driver as text (it fails the run there), never restarting training."""
    try:
        result: Any = _post_training(job_data, GeneratorSource(folder=generator_dir), None, request.split,
                                     request.heatmap, request.samples, request.shapes)
        result.where = f"rank-0 training worker, {result.where}"
    except Exception as e:  # noqa: BLE001 - reported by the driver, which marks the run failed
        log.exception("post-training failed")
        result = f"{type(e).__name__}: {e}"
    from ray import cloudpickle

    try:
        ray.get(board.put_result.remote(cloudpickle.dumps(result)))
    except ray.exceptions.RayActorError as e:  # the board's node is gone: the driver runs the task instead
        log.warning("post-training result not delivered (%s); the driver will evaluate in a task", e)


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
            started = time.perf_counter()
            out.heatmap_png = sparsity_heatmap_png(result, tmp / "heatmap.png").read_bytes()
            timings["heatmap"] = time.perf_counter() - started
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
