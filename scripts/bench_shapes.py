"""The shapes benchmark's measured targets, in one run on one machine.

    .venv/bin/python scripts/bench_shapes.py [--base DIR] [--masks DIR] [--prompts 100] [--seeds 2] [--steps 25]

1. The detector on real held-out renderings (target >= 0.98 in every category), at 32/64/128 px.
2. The VAE round trip: the same real images encoded and decoded by the base's VAE, then read
   by the detector (what the latent resolution can carry at all).
3. The base on held-out prompts x seeds (targets: background >= 0.90, shape colour >= 0.70,
   position >= 0.60 over >= 200 pairs), with KID against real renderings (and real vs real).
4. With --masks: masked vs base, paired on the same prompts and seeds.
"""
import argparse
import tempfile
import time

import numpy as np
import torch

from maskunet import MaskUNetPipeline
from maskunet_platform.bench.shapes.benchmark import ShapesBenchSettings, format_table, run_shapes_benchmark
from maskunet_platform.bench.shapes.detector import detect
from maskunet_platform.bench.shapes.features import image_features, kid
from maskunet_platform.bench.shapes.prompts import benchmark_prompts, real_images
from maskunet_platform.bench.shapes.scoring import CATEGORIES, score, summarize


def line(label: str, summary: dict) -> str:
    return f"{label:<34}" + "  ".join(f"{c} {summary[c]['mean']:.3f}" for c in CATEGORIES)


@torch.no_grad()
def vae_round_trip(vae, images: list[np.ndarray]) -> list[np.ndarray]:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = []
    for chunk in x.split(32):
        chunk = chunk.to(vae.device)
        recon = vae.decode(vae.encode(chunk).latent_dist.mean).sample.cpu()
        out.extend(((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="default: the shipped pretrained shapes base")
    parser.add_argument("--masks", default=None)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    args = parser.parse_args()
    if args.base is None:
        from maskunet.tiny import install_shapes_base

        args.base = str(install_shapes_base(tempfile.mkdtemp() + "/base"))
    prompts = benchmark_prompts(200)
    print("1. detector on real held-out renderings (200 prompts)")
    for resolution in (32, 64, 128):
        images = real_images(prompts, resolution)
        print(line(f"   {resolution} px", summarize([score(p, detect(im)) for p, im in zip(prompts, images)])))
    pipe = MaskUNetPipeline.from_base(args.base, masks=args.masks)
    pipe.set_progress_bar_config(disable=True)
    if torch.cuda.is_available():
        pipe.to("cuda")
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    real = real_images(prompts, resolution)
    latent = pipe.unet.config.sample_size
    print(f"2. VAE round trip ({resolution} px -> {latent}x{latent} latents -> {resolution} px)")
    recon = vae_round_trip(pipe.vae, real)
    print(line("   reconstructions", summarize([score(p, detect(im)) for p, im in zip(prompts, recon)])))
    other = real_images(prompts, resolution, seed=7)
    print(f"   KID real vs real (another rendering): {kid(image_features(real), image_features(other))[0]:.3f}")
    print(f"   KID reconstructions vs real:          {kid(image_features(recon), image_features(other))[0]:.3f}")
    settings = ShapesBenchSettings(prompts=args.prompts, seeds=args.seeds, steps=args.steps, guidance=args.guidance)
    print(f"3. {'masked vs base' if args.masks else 'base'}: {args.prompts} held-out prompts x {args.seeds} seeds, "
          f"{args.steps} DDIM steps, guidance {args.guidance}")
    started = time.perf_counter()
    report = run_shapes_benchmark(pipe, settings, compare=bool(args.masks))
    for row in format_table(report.metrics()):
        print("   " + row)
    print(f"   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
