"""Mask state saved for backward per sample, and the step time, on the SD1.5 U-Net architecture.

    .venv/bin/python scripts/bench_mask_memory.py [--dtype bf16] [--generator-dtype fp32] [--repeats 3]

One training step of the masked SD1.5 U-Net (random weights, 8x8 latents: mask state does not
depend on the resolution) under `torch.autograd.graph.saved_tensors_hooks`. Every tensor
autograd keeps whose trailing dims are a masked layer's (out, fan_in) is mask state, except
the frozen weights themselves; each storage is counted once. Reported per sample (batch 2). The step time is the median CPU wall
time of forward + backward at that size. Runs against any checkout on PYTHONPATH, so the same
script measures the code before and after a change (the old API computed rho every step).
"""
import argparse
import statistics
import time

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from maskunet import MaskConfig, MaskedUNet, MaskGenerator, sparsity_penalty
from maskunet.sd15 import SD15_UNET_CONFIG
from maskunet.tiny import SD_SCHEDULE
from maskunet.training import diffusion_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(dtype, generator_dtype, sparsity_weight: float) -> MaskedUNet:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG).to(dtype)
    generator = MaskGenerator.from_unet(unet, MaskConfig()).to(generator_dtype)
    masked = MaskedUNet(unet, generator).train()
    if hasattr(masked, "track_drop_probability"):  # rho is opt-in since the compact-mask change
        masked.track_drop_probability = sparsity_weight > 0
    return masked


def step(masked: MaskedUNet, scheduler, batch: int, dtype, sparsity_weight: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, 8, 8, generator=g).to(dtype)
    text = torch.randn(batch, 77, 768, generator=g).to(dtype)
    t = torch.randint(0, 1000, (batch,), generator=g)
    loss = diffusion_loss(masked, scheduler, latents, text, torch.randn(latents.shape, generator=g).to(dtype), t).mean()
    if getattr(masked, "track_drop_probability", True):
        loss = loss + sparsity_penalty(masked.expected_sparsity(), 0.03, sparsity_weight)
    return loss


def saved_mask_bytes(masked, scheduler, batch, dtype, sparsity_weight) -> dict[str, int]:
    shapes = {tuple(m.weight.shape[:2]) for _, m in masked.masked_layers()}
    params = {p.untyped_storage().data_ptr() for p in masked.parameters()}  # frozen W (and views): no extra
    seen, by_dtype = set(), {}

    def pack(t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.dim() >= 2 and tuple(t.shape[-2:]) in shapes and key[0] not in params and key not in seen:
            seen.add(key)
            by_dtype[str(t.dtype)] = by_dtype.get(str(t.dtype), 0) + key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step(masked, scheduler, batch, dtype, sparsity_weight)
    loss.backward()
    masked.generator.zero_grad(set_to_none=True)
    return by_dtype


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--generator-dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity-weight", type=float, default=0.0)
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    masked = build(dtype, DTYPES[args.generator_dtype], args.sparsity_weight)
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k not in ("set_alpha_to_one", "steps_offset")})
    by_dtype = saved_mask_bytes(masked, scheduler, args.batch, dtype, args.sparsity_weight)
    total = sum(by_dtype.values())
    print(f"SD1.5 U-Net {args.dtype}, generator {args.generator_dtype}, batch {args.batch}, "
          f"sparsity weight {args.sparsity_weight}")
    print(f"mask state saved for backward per sample: {total / args.batch / 2**30:.3f} GiB "
          + ", ".join(f"{k} {v / args.batch / 2**30:.3f}" for k, v in sorted(by_dtype.items())))
    times = []
    for _ in range(args.repeats + 1):
        started = time.perf_counter()
        step(masked, scheduler, args.batch, dtype, args.sparsity_weight).backward()
        masked.generator.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    print(f"training step (fwd+bwd, 8x8 latents): median {statistics.median(times[1:]):.2f} s of {args.repeats} "
          f"(first {times[0]:.2f} s)")


if __name__ == "__main__":
    main()
