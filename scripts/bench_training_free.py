"""Training-free MaskUNet benchmark (issue 15), on the pretrained tiny shapes base.

1. Quality: the shapes benchmark (background, colour, kind, position, binding) for plain
   sampling vs. training-free sampling, paired over the same held-out prompts and seeds
   (same initial latents, same DPM-Solver++ 2M scheduler and step count), with 95% Wilson
   intervals per model and paired t-intervals of the difference. The training-free reward
   is the weight-free shapes reward (maskunet/shapes_reward.py): like the paper's rewards on
   T2I-CompBench, it scores the notions the benchmark measures, with a different (soft,
   differentiable) estimate than the benchmark's detector.
   The logits are per prompt: one call per prompt draws its `--seeds` images as one batch
   sharing the mask, as the paper shares it across a prompt's batch.
2. Time: wall time per image, training-free / plain (rewards are not tracked while timing
   is what is reported, as in `maskunet generate` without --report), and the time of one
   optimisation iteration (U-Net forward + VAE decode + reward + backward + AdamW) relative
   to one plain U-Net step: (training-free - plain time) / iterations vs. plain time / steps.

Usage: python scripts/bench_training_free.py [--prompts 12] [--seeds 2] [--steps 15]
       [--schedule reference] [--lr 0.01] [--out report.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maskunet import MaskUNetPipeline
from maskunet.rewards import build_reward
from maskunet.schedules import make_scheduler, parse_iteration_schedule
from maskunet.tiny import install_shapes_base
from maskunet.training_free import TrainingFreeConfig, TrainingFreeSampler
from maskunet_platform.bench.shapes.detector import detect
from maskunet_platform.bench.shapes.prompts import benchmark_prompts
from maskunet_platform.bench.shapes.scoring import CATEGORIES, paired_difference, score, summarize


def to_uint8(images) -> list[np.ndarray]:
    return list(np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8))


def generate(pipe, sampler, caption: str, seeds: list[int], args) -> tuple[list[np.ndarray], float, int]:
    """(images, seconds, optimisation iterations) for one prompt and its seeds, as one batch."""
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np",
                  num_images_per_prompt=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds])
    start = time.perf_counter()
    if sampler is None:
        images, iterations = pipe(caption, **kwargs).images, 0
    else:
        out = sampler(caption, **kwargs)
        images, iterations = out.images, sum(r.iterations for r in out.steps)
    return to_uint8(images), time.perf_counter() - start, iterations


def run(args) -> dict:
    base = Path(tempfile.mkdtemp(prefix="tf-bench-")) / "base"
    install_shapes_base(base)
    pipe = MaskUNetPipeline.from_base(str(base))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("dpm++2m", pipe.scheduler.config)
    config = TrainingFreeConfig(schedule=args.schedule, lr=args.lr, keep_probability=args.keep, track_rewards=False)
    sampler = TrainingFreeSampler(pipe, build_reward(["shapes"]), config)
    prompts = benchmark_prompts(args.prompts, seed=0)
    seeds = list(range(args.seeds))
    generate(pipe, None, prompts[0].caption, seeds[:1], args)  # warm-up (first-call allocations)
    scores = {"plain": [], "training_free": []}
    seconds = {"plain": 0.0, "training_free": 0.0}
    iterations = 0
    for i, prompt in enumerate(prompts):
        for model, s in (("plain", None), ("training_free", sampler)):
            images, took, iters = generate(pipe, s, prompt.caption, seeds, args)
            scores[model] += [score(prompt, detect(im)) for im in images]
            seconds[model] += took
            iterations += iters
        print(f"prompt {i + 1}/{len(prompts)}: plain {seconds['plain']:.1f} s, training-free "
              f"{seconds['training_free']:.1f} s so far", flush=True)
    images = len(prompts) * len(seeds)
    plain_step = seconds["plain"] / (len(prompts) * args.steps)  # one batched U-Net step (+ solver)
    iteration = (seconds["training_free"] - seconds["plain"]) / iterations  # per batched iteration
    return {
        "settings": {**vars(args), "schedule_per_step": parse_iteration_schedule(args.schedule, args.steps)},
        "items": images,
        "results": {m: summarize(s) for m, s in scores.items()},
        "difference": paired_difference(scores["plain"], scores["training_free"]),
        "seconds_per_image": {m: t / images for m, t in seconds.items()},
        "time_ratio": seconds["training_free"] / seconds["plain"],
        "iterations_per_prompt": iterations / len(prompts),
        "iteration_over_plain_step": iteration / plain_step,
    }


def print_table(report: dict) -> None:
    fmt = lambda s: "-" if s["mean"] is None else f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"
    sfmt = lambda s: "-" if s["mean"] is None else f"{s['mean']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}]"
    print(f"{'category':<11}{'plain':>24}{'training-free':>24}{'difference (paired)':>26}")
    for c in CATEGORIES:
        r = report["results"]
        print(f"{c:<11}{fmt(r['plain'][c]):>24}{fmt(r['training_free'][c]):>24}{sfmt(report['difference'][c]):>26}")
    t = report["seconds_per_image"]
    print(f"time per image: plain {t['plain']:.2f} s, training-free {t['training_free']:.2f} s "
          f"= {report['time_ratio']:.1f}x; {report['iterations_per_prompt']:.0f} iterations per prompt; one "
          f"iteration = {report['iteration_over_plain_step']:.2f} plain U-Net steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--schedule", default="reference")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--keep", type=float, default=0.934)
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine two threads were up to 10x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = run(args)
    print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
