"""Batch-invariant inference: a request's image must not depend on what it was batched with.

On CPU, oneDNN convolutions, small matrix products and group norms pick kernels (and split
work between threads) by batch size, so the same sample gives slightly different floats alone
and in a batch (measured on the shapes base: 1 of 4 PNGs equal). Convolutions, group norms
and 2-D linear layers (time embeddings, the mask generator's MLPs) therefore run one sample
at a time; every other
op of the U-Net, VAE and text encoder (3-D linears, attention, norms) was measured to give
the same bits per sample at any batch size, except in the VAE decoder, whose output for
batch 1 and batch 2 differs by ~1e-6 (enough to flip a PNG pixel of a sharp image), so
decoding runs one latent at a time. The test suite checks the end result byte for byte; the
cost is in the benchmark (batching still pays for attention and the Python loop).
"""
import types

import torch
from torch import nn

_PATCHED = "_maskunet_per_sample"
_PER_SAMPLE_TYPES = (nn.Conv2d, nn.Linear, nn.GroupNorm)


def _per_sample(module: nn.Module, forward, x: torch.Tensor, *args, **kwargs):
    if x.dim() == 0 or x.shape[0] <= 1 or (isinstance(module, nn.Linear) and x.dim() != 2):
        return forward(x, *args, **kwargs)
    return torch.cat([forward(x[i:i + 1], *args, **kwargs) for i in range(x.shape[0])])


def _decode_per_sample(vae: nn.Module) -> None:
    """`vae.decode` one latent at a time (the same path as a batch of one)."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    original = vae.decode

    def decode(z: torch.Tensor, return_dict: bool = True, **kwargs):
        if z.shape[0] <= 1:
            return original(z, return_dict=return_dict, **kwargs)
        sample = torch.cat([original(z[i:i + 1], return_dict=False, **kwargs)[0] for i in range(z.shape[0])])
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    vae.decode = decode


def make_batch_invariant(*models: nn.Module) -> int:
    """Patch the plain Conv2d / Linear / GroupNorm modules of `models` in place, and a VAE's
    decode; returns how many modules."""
    count = 0
    for model in models:
        if hasattr(model, "decode") and hasattr(model, "post_quant_conv") and not getattr(model, _PATCHED, False):
            _decode_per_sample(model)
            setattr(model, _PATCHED, True)
        for module in model.modules():
            if type(module) not in _PER_SAMPLE_TYPES or getattr(module, _PATCHED, False):
                continue
            original = module.forward
            module.forward = types.MethodType(
                lambda self, x, *a, _f=original, **k: _per_sample(self, _f, x, *a, **k), module)
            setattr(module, _PATCHED, True)
            count += 1
    return count
