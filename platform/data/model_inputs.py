"""Batch tensors -> model inputs, on the consumer's device: pixel scaling and latent sampling.

Preprocessing ships pixels as uint8 (a quarter of float32's bytes through the object
store, host memory and the host-to-device copy) and they become [-1, 1] floats here,
after the copy. Encoded data carries the VAE posterior's mean and standard deviation, and
latents are drawn here as `mean + std * eps` with the caller's generator: the same
convention as sampling `latent_dist` of raw images, so both paths train on samples.
"""
from __future__ import annotations

import torch


def pixels_to_model(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, 3, R, R) in [0, 255] -> `dtype` in [-1, 1]; float input is taken as already scaled."""
    if pixels.dtype == torch.uint8:
        return pixels.to(torch.float32).div_(127.5).sub_(1.0).to(dtype)  # 255 / 127.5 - 1 == 1 exactly
    return pixels.to(dtype)


def sample_latents(mean: torch.Tensor, std: torch.Tensor | None, device,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """float32 latents on `device`: `mean + std * eps`, eps ~ N(0, 1) from `generator`.

    eps is drawn like diffusers' `DiagonalGaussianDistribution.sample` draws it (one
    `randn` of the latents' shape on the generator's device), so a generator in the same
    state gives the same latents as sampling the raw images' posterior. No `std` (shards
    written before it was stored): the mean.
    """
    mean = mean.to(device, torch.float32)
    if std is None:
        return mean
    eps_device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=eps_device, dtype=torch.float32)
    return mean + std.to(device, torch.float32) * eps.to(device)
