"""The per-worker Ray Train function: frozen base + masked U-Net + engine, train, report, checkpoint."""
import gc
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import ray.train
import torch

from maskunet.compile import compile_module, compile_wanted
from maskunet.training import diffusion_loss, sample_timesteps
from maskunet_platform.config import JobConfig
from maskunet_platform.console.train_progress import BoardClient
from maskunet_platform.data.stats import drop_metrics
from maskunet_platform.train.base import DTYPES, FrozenBase, batch_inputs, load_frozen_base
from maskunet_platform.train.checkpoint import (GENERATOR_DIR, download_for_rank, restore_training_checkpoint,
                                                 save_training_checkpoint)
from maskunet_platform.train.engine import Engine, build_engine, configure_worker_env
from maskunet_platform.train.recovery import checkpoint_dir_name, checkpoint_to_resume, mark_complete
from maskunet_platform.train.methods import Trainee, build_trainee
from maskunet_platform.train.metrics import MetricWindow, gather_per_rank, peak_memory_mb, realised_sparsity
from maskunet_platform.train.quick_eval import QuickEval
from maskunet_platform.train.reward import RewardObjective
from maskunet_platform.train.rng import fingerprint, resume_streams
from maskunet_platform.train.tracking import WorkerTracker

log = logging.getLogger(__name__)


def mask_config(job: JobConfig):
    from maskunet import MaskConfig

    m = job.mask
    return MaskConfig(layers=m.layers, reduction=m.reduction, hidden=m.hidden,
                      logit_bias=m.logit_bias, tau=m.tau, threshold=m.threshold, text=m.text_conditioning)


@dataclass
class Worker:
    job: JobConfig
    base: FrozenBase
    trainee: Trainee  # what trains (train.method): mask generator, LoRA or the whole U-Net
    engine: Engine
    rank: int
    world_size: int
    rng: torch.Generator
    tracker: WorkerTracker
    board: BoardClient  # rank 0's progress to the driver's console (a no-op elsewhere)
    quick: Optional[QuickEval] = None  # fixed held-out rows scored at every report (sweeps)
    reward: Optional[RewardObjective] = None  # train.objective reward | both
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32  # of the U-Net's inputs (train.precision)

    @property
    def masked(self):
        """The MaskedUNet (masks method) or None."""
        return self.trainee.masked


@dataclass
class StepResult:
    per_sample: Optional[torch.Tensor]  # denoising loss per row (objective denoise | both)
    timesteps: Optional[torch.Tensor]
    rewards: Optional[torch.Tensor]  # per sampled image (objective reward | both)
    stepped: bool


def denoising_loss(w: Worker, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-row losses, timesteps): the diffusion loss of the trained model on the batch."""
    latents, text_states = batch_inputs(w.base, batch, w.device, w.dtype, w.rng)
    noise = torch.randn(latents.shape, generator=w.rng).to(latents)
    timesteps = sample_timesteps(w.base.noise_scheduler, latents.shape[0], latents.device, w.rng)
    per_sample = diffusion_loss(w.engine.forward_module, w.base.noise_scheduler, latents, text_states,
                                noise, timesteps)
    weights = batch.get("loss_weight")  # subject jobs: 1 for instance rows, prior_loss_weight for class rows
    loss = per_sample.mean() if weights is None else (per_sample * weights.to(per_sample)).mean()
    return loss, per_sample.detach(), timesteps


def train_step(w: Worker, batch: dict[str, torch.Tensor]) -> StepResult:
    """One micro-batch: the objective's losses (+ the masks' sparsity penalty), backward, step."""
    loss, per_sample, timesteps, rewards = 0.0, None, None, None
    if w.job.train.objective != "reward":
        loss, per_sample, timesteps = denoising_loss(w, batch)
    if w.reward is not None:
        reward_loss, rewards = w.reward.loss(w.engine.forward_module, w.base, w.rng)
        loss = loss + w.job.train.reward.weight * reward_loss
    penalty = w.trainee.penalty(w.job)  # rho costs 4 bytes per mask entry: only when weighted
    if penalty is not None:
        loss = loss + penalty
    w.engine.backward(loss)
    return StepResult(per_sample, timesteps, rewards, w.engine.step())


def batches(job: JobConfig, shard) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches from this worker's Ray Data `shard` (a new pass per epoch, reading
    the row groups in a new order), rows mixed in a local shuffle buffer (`data.shuffle_buffer`)."""
    from maskunet_platform.data.pipeline import local_shuffle_buffer

    buffer = local_shuffle_buffer(job.data)
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(batch_size=job.data.batch_size, drop_last=True,
                                              local_shuffle_buffer_size=buffer):
            seen += 1
            yield batch
        if not seen:
            raise RuntimeError(f"training shard has fewer than data.batch_size={job.data.batch_size} rows")


class FirstBatchEarly:
    """Starts the data pipeline while the worker sets up: a thread takes the first batch
    (Ray Data's executor, read tasks and their processes start meanwhile), then the loop
    goes on with the same iterator. Without it the pipeline starts only after set-up."""

    def __init__(self, job: JobConfig):
        self._batches = batches(job, ray.train.get_dataset_shard("train"))
        self._first: Optional[dict] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._take, name="maskunet-first-batch", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        try:
            self._first = next(self._batches)
        except BaseException as e:  # noqa: BLE001 - raised in the training thread below
            self._error = e

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield self._first
        yield from self._batches


def setup_worker(config: dict[str, Any], job: JobConfig) -> Worker:
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if job.train.use_gpu else torch.device("cpu")
    started = time.perf_counter()
    base = load_frozen_base(job.model, device, DTYPES[job.train.precision])
    if job.train.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    trainee = build_trainee(job, base.unet, device)  # seeded: identical init on every rank
    if compile_wanted(job.model.compile, device):  # in place: hooks, state-dict keys stay
        compile_module(base.unet)
    loaded = time.perf_counter()
    engine = build_engine(trainee.model, job.train, job.data.batch_size, world_size, device)
    log.info("rank %d: base + trainee %.1fs, %s engine %.1fs", rank, loaded - started,
             "DeepSpeed" if job.train.deepspeed.enabled else "DDP", time.perf_counter() - loaded)
    rng = torch.Generator()  # seeded per rank and step in _restore
    tracker = WorkerTracker(config.get("tracking"), enabled=rank == 0, settings=job.tracking)
    board = BoardClient(config.get("progress"), enabled=rank == 0)
    board.forward_warnings()
    quick = None
    if config.get("quick_eval"):
        quick = QuickEval.prepare(base, config["quick_eval"], device, DTYPES[job.train.precision],
                                  job.train.eval.seed, job.train.eval.timestep_buckets)
    reward = None
    if job.train.objective != "denoise":
        reward = RewardObjective(job, base, device, DTYPES[job.train.precision])
    return Worker(job, base, trainee, engine, rank, world_size, rng, tracker, board, quick, reward, device,
                  DTYPES[job.train.precision])


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point for `TorchTrainer(train_loop_per_worker=...)`; config = {"job": ..., "tracking": ...,
    "post_training": {"request", "board", "stage"} when rank 0 does the run's post-training work}."""
    configure_worker_env(config["job"]["train"]["use_gpu"])
    started = time.perf_counter()
    job = JobConfig.model_validate(config["job"])
    data = FirstBatchEarly(job)
    w = setup_worker(config, job)
    log.info("rank %d: set up in %.1fs", w.rank, time.perf_counter() - started)
    resume_step = _restore(w)
    w.board.ready(resume_step, time.perf_counter() - started)
    if resume_step:  # evidence of an exact continuation: the interrupted run logged the same values here
        w.tracker.log_metrics(gather_per_rank({"rng/fingerprint": fingerprint(w.rng)}, w.rank, w.world_size),
                              resume_step)
    post = config.get("post_training") if w.rank == 0 else None
    with tempfile.TemporaryDirectory(prefix="maskunet-final-") as final:
        trained = _train(w, config, data, resume_step, Path(final) / GENERATOR_DIR if post else None)
        w.tracker.close()
        if trained is not None:  # the final weights of this run: evaluate them here, now
            from maskunet_platform.train.post_training import post_train_in_worker

            _release_training_state(w)
            w.board.phase(post["stage"])
            post_train_in_worker(config["job"], post["request"], post["board"], str(trained))


def _train(w: Worker, config: dict[str, Any], data, resume_step: int, keep_final: Optional[Path]) -> Optional[Path]:
    """Steps from `resume_step` up to train.steps; returns `keep_final` once the final
    checkpoint's weights were copied there (None when this call reported no final checkpoint)."""
    train = w.job.train
    step = resume_step
    window = MetricWindow(train.timestep_buckets, w.base.noise_scheduler.config.num_train_timesteps)
    kept = None
    for batch in data:
        if step >= train.steps:
            break
        result = train_step(w, batch)
        if result.per_sample is not None:
            window.add(result.per_sample, result.timesteps)
        if result.rewards is not None:
            window.add_rewards(result.rewards)
        if not result.stepped:
            continue
        step += 1
        window.add_step()
        if step % train.log_every and step % train.checkpoint_every and step != train.steps:
            continue
        # Each rank's stream fingerprint: distinct per rank, and repeated by a resumed run at the same step.
        metrics = window.reduce({"rng/fingerprint": fingerprint(w.rng)}, w.rank, w.world_size)
        metrics |= _step_metrics(w, step, resume_step)
        if w.rank == 0 and config.get("drop_counter"):
            metrics |= drop_metrics(config["drop_counter"])
        window.reset()
        w.tracker.log_metrics(metrics, step)
        w.board.step(step, metrics)
        kept = keep_final if step == train.steps else None
        _report(w, metrics, step, checkpoint=step % train.checkpoint_every == 0 or step == train.steps, keep=kept)
    return kept


def _release_training_state(w: Worker) -> None:
    """The engine, optimizer state and trained copy of the U-Net are not needed any more: free
    them before the post-training work loads the base and the exported weights anew."""
    w.engine = w.trainee = w.base = w.quick = w.reward = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _step_metrics(w: Worker, step: int, resume_step: int) -> dict[str, float]:
    metrics = {"step": step, "resumed_from_step": resume_step, "train/lr": w.engine.lr,
               "train/skipped_steps": w.engine.skipped_steps,
               "train/trainable_params": float(w.trainee.trainable_count),
               "train/peak_memory_mb": peak_memory_mb(w.device), **w.trainee.extra_metrics}
    if w.engine.loss_scale is not None:
        metrics["train/loss_scale"] = w.engine.loss_scale.scale
    if w.masked is not None:
        stats = w.masked.mask_stats()
        metrics["train/sparsity_realised"] = realised_sparsity(stats)
        if stats["rho"] is not None:
            metrics["train/sparsity_expected"] = stats["rho"]
    if w.quick is not None and w.masked is not None:
        metrics |= w.quick.metrics(w.engine.forward_module, w.masked, w.base.noise_scheduler)
    return metrics


def _report(w: Worker, metrics: dict, step: int, checkpoint: bool, keep: Optional[Path] = None) -> None:
    """Report this step's metrics, with a checkpoint when asked; `keep` (rank 0): where to copy
    the checkpoint's exported weights."""
    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="maskunet-ckpt-") as local:
        save_training_checkpoint(w.engine, w.trainee, step, w.rank, w.world_size, local, rng=w.rng)
        if keep is not None:
            shutil.copytree(Path(local) / GENERATOR_DIR, keep)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                         checkpoint_dir_name=checkpoint_dir_name(step))
    mark_complete(step, w.rank)


def _restore(w: Worker) -> int:
    """Continue from the newest checkpoint (downloading only this rank's files) and set this
    rank's random streams (see rng.py); returns the step to continue from."""
    checkpoint = checkpoint_to_resume(w.world_size)
    seed = w.job.train.seed
    if checkpoint is None:
        resume_streams(w.rng, seed, w.rank, 0, None)
        return 0
    with tempfile.TemporaryDirectory(prefix="maskunet-resume-") as local:
        download_for_rank(checkpoint.filesystem, checkpoint.path, local, w.rank, w.world_size, w.engine.kind)
        step = restore_training_checkpoint(w.engine, w.trainee, local, w.world_size)
        how = resume_streams(w.rng, seed, w.rank, step, local)
    log.info("rank %d: resumed at step %d (random streams %s)", w.rank, step, how)
    return step
