"""The per-worker Ray Train function: frozen base + masked U-Net + engine, train, report, checkpoint."""
import logging
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import ray.train
import torch

from maskunet import MaskedUNet, MaskGenerator, sparsity_penalty
from maskunet.training import diffusion_loss, sample_timesteps
from maskunet_platform.config import JobConfig
from maskunet_platform.data.stats import drop_metrics
from maskunet_platform.train.base import DTYPES, FrozenBase, batch_inputs, load_frozen_base
from maskunet_platform.train.checkpoint import restore_training_checkpoint, save_training_checkpoint
from maskunet_platform.train.engine import Engine, build_engine, configure_worker_env
from maskunet_platform.train.recovery import checkpoint_dir_name, checkpoint_to_resume, mark_complete
from maskunet_platform.train.metrics import MetricWindow, realised_sparsity
from maskunet_platform.train.tracking import WorkerTracker

log = logging.getLogger(__name__)


def mask_config(job: JobConfig):
    from maskunet import MaskConfig

    m = job.mask
    return MaskConfig(layers=m.layers, reduction=m.reduction, hidden=m.hidden,
                      logit_bias=m.logit_bias, tau=m.tau, threshold=m.threshold)


@dataclass
class Worker:
    job: JobConfig
    base: FrozenBase
    masked: MaskedUNet
    engine: Engine
    rank: int
    world_size: int
    rng: torch.Generator
    tracker: WorkerTracker


def train_step(w: Worker, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One micro-batch: diffusion loss of the masked U-Net + sparsity penalty, backward, step."""
    latents, text_states = batch_inputs(w.base, batch, w.masked.device, w.masked.dtype)
    noise = torch.randn(latents.shape, generator=w.rng).to(latents)
    timesteps = sample_timesteps(w.base.noise_scheduler, latents.shape[0], latents.device, w.rng)
    per_sample = diffusion_loss(w.engine.forward_module, w.base.noise_scheduler, latents, text_states,
                                noise, timesteps)
    rho = w.masked.expected_sparsity()
    loss = per_sample.mean() + sparsity_penalty(rho, w.job.mask.target_sparsity, w.job.mask.sparsity_weight)
    w.engine.backward(loss)
    stepped = w.engine.step()
    return per_sample.detach(), timesteps, stepped


def batches(job: JobConfig) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches from this worker's Ray Data shard (a new pass per epoch)."""
    shard = ray.train.get_dataset_shard("train")
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(batch_size=job.data.batch_size, drop_last=True):
            seen += 1
            yield batch
        if not seen:
            raise RuntimeError(f"training shard has fewer than data.batch_size={job.data.batch_size} rows")


def setup_worker(config: dict[str, Any]) -> Worker:
    job = JobConfig.model_validate(config["job"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if job.train.use_gpu else torch.device("cpu")
    base = load_frozen_base(job.model, device, DTYPES[job.train.precision])
    if job.train.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    torch.manual_seed(job.train.seed)  # identical generator init on every rank
    generator = MaskGenerator.from_unet(base.unet, mask_config(job)).to(device)
    masked = MaskedUNet(base.unet, generator).train()
    if job.train.compile:
        base.unet.compile()
    engine = build_engine(masked, job.train, job.data.batch_size, world_size, device)
    rng = torch.Generator().manual_seed(job.train.seed * 1_000_003 + rank)
    tracker = WorkerTracker(config.get("tracking"), enabled=rank == 0)
    return Worker(job, base, masked, engine, rank, world_size, rng, tracker)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point for `TorchTrainer(train_loop_per_worker=...)`; config = {"job": ..., "tracking": ...}."""
    configure_worker_env(config["job"]["train"]["use_gpu"])
    started = time.perf_counter()
    w = setup_worker(config)
    log.info("rank %d: set up in %.1fs", w.rank, time.perf_counter() - started)
    train = w.job.train
    step = resume_step = _restore(w)
    w.rng.manual_seed(train.seed * 1_000_003 + w.rank * 7919 + step)  # fresh noise after a resume
    window = MetricWindow(train.timestep_buckets, w.base.noise_scheduler.config.num_train_timesteps)
    for batch in batches(w.job):
        if step >= train.steps:
            break
        per_sample, timesteps, stepped = train_step(w, batch)
        window.add(per_sample, timesteps)
        if not stepped:
            continue
        step += 1
        window.add_step()
        if step % train.log_every and step % train.checkpoint_every and step != train.steps:
            continue
        metrics = window.reduce() | _step_metrics(w, step, resume_step)
        if w.rank == 0 and config.get("drop_counter"):
            metrics |= drop_metrics(config["drop_counter"])
        window.reset()
        w.tracker.log_metrics(metrics, step)
        _report(w, metrics, step, checkpoint=step % train.checkpoint_every == 0 or step == train.steps)
    w.tracker.close()


def _step_metrics(w: Worker, step: int, resume_step: int) -> dict[str, float]:
    stats = w.masked.mask_stats()
    return {"step": step, "resumed_from_step": resume_step, "train/lr": w.engine.lr,
            "train/sparsity_realised": realised_sparsity(stats), "train/sparsity_expected": stats["rho"]}


def _report(w: Worker, metrics: dict, step: int, checkpoint: bool) -> None:
    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="maskunet-ckpt-") as local:
        save_training_checkpoint(w.engine, w.masked.generator, step, w.rank, w.world_size, local)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                         checkpoint_dir_name=checkpoint_dir_name(step))
    mark_complete(step, w.rank)


def _restore(w: Worker) -> int:
    checkpoint = checkpoint_to_resume(w.world_size)
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as local:
        return restore_training_checkpoint(w.engine, w.masked.generator, local, w.world_size)
