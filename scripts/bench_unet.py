"""Masked vs plain U-Net cost: FLOPs on the SD1.5 config and CPU wall time on the tiny config.

    .venv/bin/python scripts/bench_unet.py [--repeats 30] [--batch 4] [--skip-flops]

FLOPs: torch FlopCounterMode (matmuls/convs), batch 1, 64x64 latents, masks in deterministic
inference mode (reference implementation: 797.4 / 677.2 = 1.177; target <= 1.11).
Wall time: median forward+backward in one process (target <= 1.25), against two baselines:
the plain U-Net trained in full (every weight gets a gradient) and the frozen plain U-Net
back-propagating to its input only (the least any decoder-side method must do).
"""
import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from maskunet import MaskConfig, MaskedUNet, MaskGenerator
from maskunet.sd15 import SD15_UNET_CONFIG
from maskunet.tiny import TINY_UNET


def count_flops(model, *inputs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


def flops_sd15() -> tuple[float, float]:
    with torch.device("meta"):  # shapes only: no 3.4 GB of random weights needed
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        inputs = (torch.randn(1, 4, 64, 64), torch.tensor([500]), torch.randn(1, 77, 768))
        plain = count_flops(unet, *inputs)
        masked = MaskedUNet(unet, MaskGenerator.from_unet(unet, MaskConfig())).eval()
        masked_flops = count_flops(masked, *inputs)
        n_params = sum(p.numel() for p in masked.generator.parameters())
    print(f"SD1.5 generator + adapters: {n_params / 1e6:.2f}M trainable parameters")
    return plain / 1e9, masked_flops / 1e9


def median_step_seconds(step, repeats: int) -> float:
    for _ in range(3):
        step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wall_time_tiny(batch: int, latent: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, 4, latent, latent)
    t = torch.randint(0, 1000, (batch,))
    c = torch.randn(batch, 77, TINY_UNET["cross_attention_dim"])
    plain = UNet2DConditionModel(**TINY_UNET)

    def full_finetune_step():
        plain.zero_grad(set_to_none=True)
        plain(x, t, c).sample.square().mean().backward()

    def input_grad_step():
        plain(x.requires_grad_(True), t, c).sample.square().mean().backward()

    results = {"plain, all weights trainable": median_step_seconds(full_finetune_step, repeats)}
    plain.requires_grad_(False)
    results["plain, frozen (input grad only)"] = median_step_seconds(input_grad_step, repeats)
    x.requires_grad_(False)
    masked = MaskedUNet(plain, MaskGenerator.from_unet(plain, MaskConfig())).train()

    def masked_step():
        masked.generator.zero_grad(set_to_none=True)
        masked(x, t, c).sample.square().mean().backward()

    results["masked (generator trainable)"] = median_step_seconds(masked_step, repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--latent", type=int, default=8, help="latent side (tiny base at 64px -> 8)")
    parser.add_argument("--skip-flops", action="store_true")
    args = parser.parse_args()
    if not args.skip_flops:
        plain, masked = flops_sd15()
        print(f"FLOPs SD1.5 U-Net, batch 1, 64x64 latents: plain {plain:.1f} G, masked {masked:.1f} G, "
              f"ratio {masked / plain:.3f} (reference 1.177, target <= 1.11)")
    times = wall_time_tiny(args.batch, args.latent, args.repeats)
    masked = times["masked (generator trainable)"]
    print(f"CPU wall time, tiny U-Net, batch {args.batch}, {args.latent}x{args.latent} latents, "
          f"forward+backward, median of {args.repeats} (torch threads {torch.get_num_threads()}):")
    for name, seconds in times.items():
        print(f"  {name:34s} {seconds * 1e3:8.2f} ms   masked/this = {masked / seconds:.3f}")


if __name__ == "__main__":
    main()
