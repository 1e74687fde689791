"""Masked vs plain U-Net cost: FLOPs on the SD1.5 config and CPU wall time on the tiny config.

    .venv/bin/python scripts/bench_unet.py [--repeats 30] [--batch 4] [--skip-flops] [--compile]

FLOPs: torch FlopCounterMode (matmuls/convs), batch 1, 64x64 latents, masks in deterministic
inference mode (reference implementation: 797.4 / 677.2 = 1.177; target <= 1.11).
Wall time, all cases in one process, repeats interleaved (case A, B, C, A, B, C, ...), medians:
- forward+backward (target masked / frozen plain <= 1.25), against two baselines: the plain
  U-Net trained in full (every weight gets a gradient) and the frozen plain U-Net
  back-propagating to its input only (the least any decoder-side method must do);
- one inference call, no grad, deterministic masks (target masked / plain <= 1.10).
The masked U-Net runs both mask paths: "block" (the default: a block's masks in one batched
chain per weight shape) and "layer" (each layer computes its own mask: the reference).
--compile adds the same cases with the U-Nets compiled by inductor (the first calls, which
compile, are excluded from the medians; their time is printed).
"""
import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from maskunet import MaskConfig, MaskedUNet, MaskGenerator
from maskunet.compile import compile_module
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


def interleaved_medians(cases: dict, repeats: int) -> dict[str, float]:
    """Median seconds per case; every case runs once per round, so drift hits them alike."""
    for step in cases.values():
        for _ in range(3):
            step()  # warm-up
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, step in cases.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def tiny_models(batch: int, latent: int, compiled: bool):
    """Inputs, a plain U-Net (its own copy, so full fine-tuning never touches the masked one's
    weights) and a masked one, optionally compiled."""
    torch.manual_seed(0)
    inputs = (torch.randn(batch, 4, latent, latent), torch.randint(0, 1000, (batch,)),
              torch.randn(batch, 77, TINY_UNET["cross_attention_dim"]))
    plain = UNet2DConditionModel(**TINY_UNET)
    base = UNet2DConditionModel(**TINY_UNET)
    masked = MaskedUNet(base, MaskGenerator.from_unet(base, MaskConfig()))
    if compiled:
        for model in (plain, base):
            compile_module(model)
        print("compiled with inductor (first calls below include the compile)")
    return inputs, plain, masked


def wall_time_tiny(batch: int, latent: int, repeats: int, compiled: bool = False) -> dict[str, float]:
    (x, t, c), plain, masked = tiny_models(batch, latent, compiled)
    x_grad = x.clone().requires_grad_(True)

    def full_finetune_step():
        plain.requires_grad_(True).zero_grad(set_to_none=True)
        plain(x, t, c).sample.square().mean().backward()

    def input_grad_step():
        plain.requires_grad_(False)
        plain(x_grad, t, c).sample.square().mean().backward()

    def masked_step(path):
        def step():
            masked.mask_path = path
            masked.train().generator.zero_grad(set_to_none=True)
            masked(x, t, c).sample.square().mean().backward()
        return step

    @torch.no_grad()
    def plain_call():
        plain(x, t, c)

    def masked_call(path):
        @torch.no_grad()
        def call():
            masked.mask_path = path
            masked.eval()(x, t, c)
        return call

    cases = {"train: plain, all weights trainable": full_finetune_step,
             "train: plain, frozen (input grad only)": input_grad_step,
             "train: masked, block path": masked_step("block"), "train: masked, layer path": masked_step("layer"),
             "infer: plain": plain_call, "infer: masked, block path": masked_call("block"),
             "infer: masked, layer path": masked_call("layer")}
    if compiled:
        for name, step in cases.items():
            start = time.perf_counter()
            step()
            print(f"  first call {name}: {time.perf_counter() - start:.1f} s")
    return interleaved_medians(cases, repeats)


def report(times: dict[str, float], label: str) -> None:
    print(label)
    for name, seconds in times.items():
        print(f"  {name:40s} {seconds * 1e3:8.2f} ms")
    for kind, base in (("train", "train: plain, frozen (input grad only)"), ("infer", "infer: plain")):
        for path in ("block", "layer"):
            print(f"  {kind} masked ({path} path) / {base.split(': ')[1]}: "
                  f"{times[f'{kind}: masked, {path} path'] / times[base]:.3f}")
    print(f"  train masked (block path) / plain, all weights trainable: "
          f"{times['train: masked, block path'] / times['train: plain, all weights trainable']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--latent", type=int, default=8, help="latent side (tiny base at 64px -> 8)")
    parser.add_argument("--skip-flops", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the U-Nets compiled by inductor")
    args = parser.parse_args()
    if not args.skip_flops:
        plain, masked = flops_sd15()
        print(f"FLOPs SD1.5 U-Net, batch 1, 64x64 latents: plain {plain:.1f} G, masked {masked:.1f} G, "
              f"ratio {masked / plain:.3f} (reference 1.177, target <= 1.11)")
    label = (f"CPU wall time, tiny U-Net, batch {args.batch}, {args.latent}x{args.latent} latents, "
             f"median of {args.repeats} interleaved (torch threads {torch.get_num_threads()})")
    report(wall_time_tiny(args.batch, args.latent, args.repeats), label + ", eager:")
    if args.compile:
        report(wall_time_tiny(args.batch, args.latent, args.repeats, compiled=True), label + ", inductor:")


if __name__ == "__main__":
    main()
