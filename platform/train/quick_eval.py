"""A cheap paired held-out score at every training report: the same fixed rows, noise and
timesteps at every report and in every trial of a sweep, so ASHA compares like with like
(the training loss is noisy and differs across trials' random streams).

The driver takes the first held-out rows once (`quick_eval_batch`) and ships them with the
train-loop config; every rank scores the same rows (so a ZeRO-3 forward, which needs all
ranks, works) and reports the same number.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from maskunet.training import diffusion_loss
from maskunet_platform.train.base import FrozenBase, batch_inputs
from maskunet_platform.train.evaluate import stratified_timesteps


def quick_eval_batch(job, base_location: str, rows: int) -> dict[str, torch.Tensor]:
    """The first `rows` rows of the held-out split (a subject job: of its data), in a stable
    order (driver side)."""
    from maskunet_platform.train.finalize import eval_batches
    from maskunet_platform.train.post_training import eval_split

    sized = job.model_copy(update={"train": job.train.model_copy(update={
        "eval": job.train.eval.model_copy(update={"rows": rows, "batch_size": rows})})})
    for batch in eval_batches(sized, base_location, split=eval_split(job)):
        return {key: value[:rows] for key, value in batch.items() if isinstance(value, torch.Tensor)}
    raise ValueError("quick eval: the held-out split is empty (data.holdout_fraction)")


@dataclass
class QuickEval:
    latents: torch.Tensor
    states: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    base_loss: Optional[float] = None

    @classmethod
    def prepare(cls, base: FrozenBase, batch: dict, device, dtype, seed: int, buckets: int) -> "QuickEval":
        rng = torch.Generator().manual_seed(seed)
        vae_rng = torch.Generator(device).manual_seed(seed)
        latents, states = batch_inputs(base, batch, device, dtype, vae_rng)
        noise = torch.randn(latents.shape, generator=rng).to(latents)
        n_train = base.noise_scheduler.config.num_train_timesteps
        timesteps = stratified_timesteps(latents.shape[0], 0, buckets, n_train, rng).to(device)
        return cls(latents, states, noise, timesteps)

    @torch.no_grad()
    def _loss(self, model, masked, scheduler, masks: bool) -> float:
        was_training, masked.masks_enabled = masked.generator.training, masks
        masked.generator.eval()  # deterministic masks, as in the full evaluation
        try:
            return diffusion_loss(model, scheduler, self.latents, self.states, self.noise, self.timesteps).mean().item()
        finally:
            masked.masks_enabled = True
            masked.generator.train(was_training)

    def metrics(self, model, masked, scheduler) -> dict[str, float]:
        """`model`: what the training step calls (the DeepSpeed / DDP module around `masked`)."""
        if self.base_loss is None:  # the base is frozen: its loss never changes
            self.base_loss = self._loss(model, masked, scheduler, masks=False)
        loss = self._loss(model, masked, scheduler, masks=True)
        return {"eval/quick_base_loss": self.base_loss, "eval/quick_masked_loss": loss,
                "eval/quick_loss_delta": loss - self.base_loss}
