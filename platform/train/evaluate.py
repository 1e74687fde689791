"""Paired held-out evaluation: the same images, noise and timesteps through base and masked U-Net.

Reports the denoising loss per timestep bucket and overall for both, plus the masks' drop
fraction per layer and bucket (the sparsity heatmap). Masks are deterministic (eval mode).
"""
import hashlib
from dataclasses import dataclass, field
from typing import Iterable

import torch

from maskunet.training import diffusion_loss
from maskunet_platform.train.base import FrozenBase, batch_inputs
from maskunet_platform.train.metrics import bucket_names


@dataclass
class EvalResult:
    buckets: list[str]
    base_loss: dict[str, float]  # bucket -> mean loss, plus "overall"
    masked_loss: dict[str, float]
    rows: int
    layer_drop: dict[str, list[float]] = field(default_factory=dict)  # layer -> drop fraction per bucket
    data_fingerprint: str = ""  # sha256 over the evaluated rows' inputs, in order (see data_digest)
    # Per-row losses in evaluation order ("base", "masked"): paired comparisons across models.
    per_sample: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        out = {f"{prefix}rows": float(self.rows)}
        for key in ["overall", *self.buckets]:
            if key in self.base_loss:
                out[f"{prefix}base_loss_{key}"] = self.base_loss[key]
                out[f"{prefix}masked_loss_{key}"] = self.masked_loss[key]
        out[f"{prefix}loss_delta_overall"] = self.masked_loss["overall"] - self.base_loss["overall"]
        if len(self.per_sample.get("masked", ())) > 1:
            lo, hi = mean_interval([m - b for m, b in zip(self.per_sample["masked"], self.per_sample["base"])])[1:]
            out[f"{prefix}loss_delta_overall_lo"], out[f"{prefix}loss_delta_overall_hi"] = lo, hi
        return out


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean with its 95% t-interval (paired differences: pass the deltas)."""
    from maskunet_platform.bench.shapes.scoring import t_quantile

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = t_quantile(0.975, n - 1) * sd / n ** 0.5
    return mean, mean - half, mean + half


def stratified_timesteps(batch: int, offset: int, buckets: int, num_train_timesteps: int,
                         rng: torch.Generator) -> torch.Tensor:
    """Sample i gets a uniform timestep inside bucket (offset + i) % buckets: every bucket is covered."""
    width = num_train_timesteps / buckets
    index = (torch.arange(batch) + offset) % buckets
    return (index * width + torch.rand(batch, generator=rng) * width).long().clamp(max=num_train_timesteps - 1)


@torch.no_grad()
def paired_eval(base: FrozenBase, generator, batches: Iterable[dict[str, torch.Tensor]],
                rows: int, buckets: int = 4, seed: int = 1234) -> EvalResult:
    """Evaluate `generator` on up to `rows` rows; the same randomness feeds base and masked.

    `generator`: a MaskGenerator, or a baseline's switch module over `base.unet` (see
    train/methods.paired_switch) whose `masks_enabled` turns its tuned weights on and off."""
    from maskunet import MaskedUNet, MaskGenerator  # here: unpickling an EvalResult needs no diffusers

    if isinstance(generator, MaskGenerator):  # generator stays fp32
        masked = MaskedUNet(base.unet, generator.to(base.unet.device).eval())
    else:
        masked = generator
    scheduler, n_train = base.noise_scheduler, base.noise_scheduler.config.num_train_timesteps
    names = bucket_names(buckets, n_train)
    sums = {kind: torch.zeros(buckets, dtype=torch.float64) for kind in ("base", "masked")}
    counts = torch.zeros(buckets, dtype=torch.float64)
    drop_sums: dict[str, torch.Tensor] = {}
    per_sample: dict[str, list[float]] = {"base": [], "masked": []}
    rng, seen, digest = torch.Generator().manual_seed(seed), 0, hashlib.sha256()
    try:
        for batch in batches:
            update_data_digest(digest, batch, min(_rows_in(batch), rows - seen))
            latents, states = batch_inputs(base, batch, base.unet.device, base.unet.dtype, _vae_rng(base, batch, rng))
            take = min(latents.shape[0], rows - seen)
            latents, states = latents[:take], states[:take]
            noise = torch.randn(latents.shape, generator=rng).to(latents)
            timesteps = stratified_timesteps(take, seen, buckets, n_train, rng).to(latents.device)
            bucket = (timesteps.cpu() * buckets // n_train).clamp(max=buckets - 1)
            masked.masks_enabled = False
            base_loss = diffusion_loss(masked, scheduler, latents, states, noise, timesteps).double().cpu()
            masked.masks_enabled = True
            masked_loss = diffusion_loss(masked, scheduler, latents, states, noise, timesteps).double().cpu()
            per_sample["base"] += base_loss.tolist()
            per_sample["masked"] += masked_loss.tolist()
            sums["base"].index_add_(0, bucket, base_loss)
            sums["masked"].index_add_(0, bucket, masked_loss)
            counts.index_add_(0, bucket, torch.ones(take, dtype=torch.float64))
            if isinstance(masked, MaskedUNet):
                _add_layer_drops(drop_sums, masked.mask_stats(per_sample=True), bucket, buckets)
            seen += take
            if seen >= rows:
                break
    finally:
        if hasattr(masked, "unwrap"):
            masked.unwrap()  # leave the base U-Net as it was
    if not seen:
        raise ValueError("paired eval got no rows: the held-out data is empty")
    result = _summarise(names, sums, counts, drop_sums, seen)
    result.data_fingerprint = digest.hexdigest()
    result.per_sample = per_sample
    return result


# The inputs that identify a held-out row, raw or pre-encoded (not derived values such as masks).
FINGERPRINT_KEYS = ("pixel_values", "input_ids", "latents", "latents_std", "encoder_hidden_states")


def _rows_in(batch: dict) -> int:
    return next(len(batch[key]) for key in FINGERPRINT_KEYS if key in batch)


def update_data_digest(digest, batch: dict, take: int) -> None:
    """Hash the first `take` rows' inputs: two evaluations saw the same rows in the same order
    exactly when their digests agree (the registry's promotion gate relies on it)."""
    for key in FINGERPRINT_KEYS:
        if key in batch:
            values = batch[key][:take].contiguous().cpu()
            digest.update(f"{key}:{tuple(values.shape)}:{values.dtype}".encode())
            digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bf16 too


def _vae_rng(base: FrozenBase, batch: dict, rng: torch.Generator) -> torch.Generator | None:
    """A seeded generator for sampling the VAE posterior (raw images, or encoded mean + std)."""
    if "latents" in batch and "latents_std" not in batch:  # old encoded shards: the mean, no sampling
        return None
    return torch.Generator(base.unet.device).manual_seed(int(torch.randint(0, 2**31, (1,), generator=rng)))


def _add_layer_drops(drop_sums: dict, stats: dict, bucket: torch.Tensor, buckets: int) -> None:
    for name, layer in stats["layers"].items():
        per_sample = torch.tensor(layer["per_sample_drop_fraction"], dtype=torch.float64)
        drop_sums.setdefault(name, torch.zeros(buckets, dtype=torch.float64)).index_add_(0, bucket, per_sample)


def _summarise(names, sums, counts, drop_sums, rows) -> EvalResult:
    def by_bucket(values: torch.Tensor) -> dict[str, float]:
        out = {names[i]: (values[i] / counts[i]).item() for i in range(len(names)) if counts[i]}
        out["overall"] = (values.sum() / counts.sum()).item()
        return out

    layer_drop = {name: [(v[i] / counts[i]).item() if counts[i] else float("nan") for i in range(len(names))]
                  for name, v in drop_sums.items()}
    return EvalResult(names, by_bucket(sums["base"]), by_bucket(sums["masked"]), rows, layer_drop)
