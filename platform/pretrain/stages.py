"""The two pretraining stages, each a plain loop: the VAE, then the U-Net (+ text encoder).

Losses are returned per step through `log(metrics, step)`; nothing here knows about Ray or
MLflow. Both stages are seeded: the data stream, the noise and the initial weights.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from maskunet_platform.pretrain.world import ShapesStream

Log = Callable[[dict[str, float], int], None]


@dataclass
class StageSettings:
    steps: int
    batch_size: int
    lr: float
    seed: int
    resolution: int
    warmup: int = 100
    log_every: int = 25
    data_workers: int = 0  # 0: rows are made on a thread of this process


def cosine_lr(settings: StageSettings) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    def factor(step: int) -> float:
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train_vae(vae, settings: StageSettings, device: torch.device, log: Log, kl_weight: float = 1e-6):
    """Reconstruction (L1 + L2) plus a small KL term, as SD's autoencoder minus its GAN/LPIPS
    terms (flat-coloured shapes need neither). Sets `scaling_factor` to 1 / latent std."""
    _start_with_small_posterior_std(vae)
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lr(settings))
    stream = ShapesStream(settings.seed, settings.batch_size, settings.resolution, workers=settings.data_workers)
    noise = torch.Generator().manual_seed(settings.seed)
    crop = settings.resolution // 2
    for step in range(settings.steps):
        pixels, _ = next(stream)
        # Random half-side crops: the VAE is convolutional, so 4x cheaper steps teach it the same.
        y, x = (int(v) for v in torch.randint(0, settings.resolution - crop + 1, (2,), generator=noise))
        pixels = pixels[:, :, y:y + crop, x:x + crop].to(device)
        with _autocast(device):
            posterior = vae.encode(pixels).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(
                posterior.mean.shape, generator=noise).to(device)
            recon = vae.decode(latents).sample.float()
        l1, l2 = (recon - pixels).abs().mean(), (recon - pixels).pow(2).mean()
        kl = posterior.kl().mean() / pixels[0].numel()
        loss = l1 + l2 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            psnr = 10 * math.log10(4.0 / max(l2.item(), 1e-10))  # pixel range [-1, 1]
            log({"vae/loss": loss.item(), "vae/l1": l1.item(), "vae/psnr": psnr, "vae/kl": kl.item()}, step + 1)
    stream.close()
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scale(vae, settings, device))
    return vae


@torch.no_grad()
def _start_with_small_posterior_std(vae, log_var: float = -6.0) -> None:
    """A fresh encoder predicts log-variance ~0, i.e. latent noise as large as the latents:
    reconstruction then learns very slowly until the encoder shrinks it. Start it small."""
    channels = vae.config.latent_channels
    last = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    last.bias[channels:] = log_var


@torch.no_grad()
def latent_scale(vae, settings: StageSettings, device: torch.device, batches: int = 8) -> float:
    """1 / std of the latents over fresh rows (SD's 0.18215 was found the same way)."""
    stream = ShapesStream(settings.seed + 1, settings.batch_size, settings.resolution)
    latents = [vae.encode(next(stream)[0].to(device)).latent_dist.mean.float() for _ in range(batches)]
    stream.close()
    return float(1.0 / torch.cat(latents).std())


class EMA:
    """Exponential moving average of weights, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.shadow.parameters()), [p.detach() for p in module.parameters()], 1 - d)


def _autocast(device: torch.device):
    # bf16 on a GPU; CPU stays fp32 (CPU bf16 matmuls are slower than fp32 at these sizes).
    return torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def train_unet(pipe, settings: StageSettings, device: torch.device, log: Log, caption_dropout: float = 0.1,
               min_snr_gamma: float = 5.0, ema_decay: float = 0.999, offset_noise: float = 0.1):
    """Diffusion loss (the scheduler's prediction type) on the frozen VAE's latents, U-Net and
    text encoder trained jointly; captions are dropped 10% of the time so classifier-free
    guidance works. Min-SNR-5 loss weights (Hang et al., 2023) speed up convergence.

    Offset noise (a per-image, per-channel constant added to the noise): flat backgrounds
    are a large constant in latent space that SD's schedule never fully hides (at t = 999
    their mean still shows through the noise), so without it the model reads the background
    off that leak instead of the caption, and generation from pure noise gets it wrong.
    Returns the EMA weights."""
    vae, unet, text_encoder, tok, sched = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    vae.to(device).eval().requires_grad_(False)
    unet.to(device).train()
    text_encoder.to(device).train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-2, fused=device.type == "cuda")
    lr = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lr(settings))
    ema_unet, ema_text = EMA(unet, ema_decay), EMA(text_encoder, ema_decay)
    alphas = sched.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    v_prediction = sched.config.prediction_type == "v_prediction"
    weight = torch.clamp(snr, max=min_snr_gamma) / (snr + 1 if v_prediction else snr)
    stream = ShapesStream(settings.seed, settings.batch_size, settings.resolution, workers=settings.data_workers)
    noise_rng = torch.Generator(device).manual_seed(settings.seed)
    drop_rng = random.Random(settings.seed)
    for step in range(settings.steps):
        pixels, captions = next(stream)
        captions = ["" if drop_rng.random() < caption_dropout else c for c in captions]
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        with torch.no_grad(), _autocast(device):
            posterior = vae.encode(pixels.to(device)).latent_dist
        latents = posterior.sample(noise_rng).float() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=noise_rng, device=device)
        noise += offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=noise_rng, device=device)
        t = torch.randint(0, len(alphas), (len(latents),), generator=noise_rng, device=device)
        noisy = sched.add_noise(latents, noise, t)
        target = sched.get_velocity(latents, noise, t) if v_prediction else noise
        with _autocast(device):
            pred = unet(noisy, t, text_encoder(ids)[0]).sample.float()
        loss = (weight[t] * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            log({"unet/loss": loss.item(), "unet/lr": lr.get_last_lr()[0]}, step + 1)
    stream.close()
    pipe.unet, pipe.text_encoder = ema_unet.shadow, ema_text.shadow
    return pipe
