"""One shapes-benchmark run: generate, detect, score, compare (paired), KID, image grid.

With masks and `compare`, the base (masks off) and the masked U-Net (masks on) draw the same
prompts with the same seeds, so their difference is paired per image. KID compares each
model's images with real renderings of the same prompts (another rendering seed).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from maskunet_platform.bench.shapes.detector import detect
from maskunet_platform.bench.shapes.features import image_features, kid
from maskunet_platform.bench.shapes.generate import generate_images, generate_training_free, image_grid
from maskunet_platform.bench.shapes.prompts import benchmark_prompts, real_images
from maskunet_platform.bench.shapes.scoring import CATEGORIES, paired_difference, score, summarize

GRID_PROMPTS = 8
# Beside the detector's categories: the differentiable shapes reward (maskunet/shapes_reward.py)
# of the same images, the function reward-trained masks learn from. The detector is the held-out
# judge: a rise here with a fall in the categories is reward hacking.
REWARD_KEY = "shapes_reward"


@dataclass(frozen=True)
class ShapesBenchSettings:
    prompts: int = 100
    seeds: int = 2
    steps: int = 25
    guidance: float = 7.5
    batch_size: int = 16
    prompt_seed: int = 0


@dataclass
class ShapesReport:
    settings: ShapesBenchSettings
    items: int
    results: dict[str, dict] = field(default_factory=dict)  # model ("base"/"masked"/"training_free") -> summary
    kid: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Generation wall time per image, one model after the other in one process (indicative:
    # the interleaved timings are bench_unet.py / bench_serve.py's).
    seconds_per_image: dict[str, float] = field(default_factory=dict)
    rewards: dict[str, list[float]] = field(default_factory=dict, repr=False)  # model -> REWARD_KEY per image
    difference: Optional[dict] = None  # masked (or training_free) - base, paired
    grid_png: bytes = b""
    scores: dict[str, list] = field(default_factory=dict, repr=False)  # model -> per-image scores (pairing)

    def metrics(self, prefix: str = "shapes") -> dict[str, float]:
        """Flat MLflow metrics: <prefix>/<model>/<category>[_lo|_hi], KID, paired differences."""
        out: dict[str, float] = {f"{prefix}/items": float(self.items)}
        for model, summary in self.results.items():
            for category, s in summary.items():
                if s["mean"] is not None:
                    out.update({f"{prefix}/{model}/{category}": s["mean"], f"{prefix}/{model}/{category}_lo": s["lo"],
                                f"{prefix}/{model}/{category}_hi": s["hi"]})
            out[f"{prefix}/{model}/kid"] = self.kid[model][0]
            if model in self.seconds_per_image:
                out[f"{prefix}/{model}/s_per_image"] = self.seconds_per_image[model]
            if model in self.rewards:
                out[f"{prefix}/{model}/{REWARD_KEY}"] = float(np.mean(self.rewards[model]))
        for category, d in {**(self.difference or {}), **self.reward_difference()}.items():
            if d["mean"] is not None:
                out.update({f"{prefix}/diff/{category}": d["mean"], f"{prefix}/diff/{category}_lo": d["lo"],
                            f"{prefix}/diff/{category}_hi": d["hi"]})
        return out

    def reward_difference(self) -> dict:
        """{REWARD_KEY: paired difference} of the non-base model's rewards, when two were scored."""
        if len(self.rewards) != 2 or "base" not in self.rewards:
            return {}
        other = next(m for m in self.rewards if m != "base")
        pairs = [[{REWARD_KEY: v} for v in self.rewards[m]] for m in ("base", other)]
        return paired_difference(*pairs, categories=(REWARD_KEY,))

    def to_json(self) -> dict:
        return {"settings": vars(self.settings), "items": self.items, "results": self.results,
                "kid": {k: {"mean": m, "std": s} for k, (m, s) in self.kid.items()}, "difference": self.difference,
                "seconds_per_image": self.seconds_per_image,
                REWARD_KEY: {m: float(np.mean(v)) for m, v in self.rewards.items()},
                f"{REWARD_KEY}_difference": self.reward_difference().get(REWARD_KEY)}


def models_to_run(has_masks: bool, compare: bool, training_free: bool = False) -> list[str]:
    other = "training_free" if training_free else "masked" if has_masks else None
    if other is None:
        return ["base"]
    return ["base", other] if compare else [other]


def run_shapes_benchmark(pipe, settings: ShapesBenchSettings, compare: bool,
                         on_progress: Optional[Callable[[str, int, int], None]] = None,
                         training_free=None) -> ShapesReport:
    """Score `pipe` (a MaskUNetPipeline or plain SD pipeline) on the held-out shapes prompts;
    with `training_free` (a maskunet TrainingFreeSampler over `pipe`), its images instead of
    the masked U-Net's (paired with the plain pipe's under `compare`)."""
    prompts = benchmark_prompts(settings.prompts, seed=settings.prompt_seed)
    seeds = list(range(settings.seeds))
    has_masks = getattr(pipe, "tuning", None) is not None  # masks, or a LoRA / fine-tuned U-Net
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    reference = real_images(prompts, resolution, seed=settings.prompt_seed + 1)
    ref_features = image_features([im for im in reference for _ in seeds])
    report = ShapesReport(settings, items=len(prompts) * len(seeds))
    scores, images = {}, {}
    for model in models_to_run(has_masks, compare, training_free is not None):
        def progress(done: int, total: int, name=model) -> None:
            if on_progress:
                on_progress(name, done, total)

        progress(0, report.items)
        started = time.perf_counter()
        if model == "training_free":
            images[model] = generate_training_free(training_free, prompts, seeds, settings.steps, settings.guidance,
                                                   on_batch=progress)
        else:
            images[model] = generate_images(pipe, prompts, seeds, settings.steps, settings.guidance,
                                            settings.batch_size, masks=(model == "masked") if has_masks else None,
                                            on_batch=progress)
        report.seconds_per_image[model] = (time.perf_counter() - started) / report.items
        pairs = [(p, s) for p in prompts for s in seeds]
        report.rewards[model] = reward_scores(images[model], [p.caption for p, _ in pairs])
        scores[model] = [score(p, detect(im)) for (p, _), im in zip(pairs, images[model])]
        report.results[model] = summarize(scores[model])
        report.scores[model] = scores[model]
        size = min(100, report.items)
        report.kid[model] = kid(image_features(images[model]), ref_features, subset_size=size)
    if len(scores) == 2:
        other = next(m for m in scores if m != "base")
        report.difference = paired_difference(scores["base"], scores[other])
    report.grid_png = _grid(reference, images, len(seeds))
    return report


def reward_scores(images: list[np.ndarray], captions: list[str]) -> list[float]:
    """The shapes reward of uint8 HxWx3 images for their captions."""
    import torch

    from maskunet.shapes_reward import ShapesReward

    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return ShapesReward()(pixels, captions).tolist()


def _grid(reference: list[np.ndarray], images: dict[str, list], seeds: int) -> bytes:
    """One row per prompt (first seed): the real rendering, then each model's image."""
    tiles = []
    for i in range(min(GRID_PROMPTS, len(reference))):
        tiles.append(reference[i])
        tiles.extend(images[model][i * seeds] for model in images)
    buf = io.BytesIO()
    image_grid(tiles, columns=1 + len(images)).save(buf, format="PNG")
    return buf.getvalue()


def format_table(metrics: dict[str, float], prefix: str = "shapes") -> list[str]:
    """Console rows `category  base [lo, hi]  masked [lo, hi]  masked - base [lo, hi]` from the
    flat metrics (`ShapesReport.metrics()`, also what a finished run's record keeps)."""
    models = [m for m in ("base", "masked", "training_free") if f"{prefix}/{m}/kid" in metrics]
    columns = [(m, f"{prefix}/{m}") for m in models]
    if f"{prefix}/diff/background" in metrics:
        columns.append((f"{models[-1]} - base (paired)", f"{prefix}/diff"))
    rows = [f"{'category':<11}" + "".join(f"{name:>24}" for name, _ in columns)]
    for category in CATEGORIES:
        cells = [_interval(metrics, f"{key}/{category}", signed=key.endswith("diff")) for _, key in columns]
        rows.append(f"{category:<11}" + "".join(f"{c:>24}" for c in cells))
    rows.append(f"{'KID':<11}" + "".join(f"{metrics[f'{prefix}/{m}/kid']:>24.3f}" for m in models))
    if all(f"{prefix}/{m}/{REWARD_KEY}" in metrics for m in models):
        cells = [f"{metrics[f'{prefix}/{m}/{REWARD_KEY}']:.3f}" for m in models]
        cells += [_interval(metrics, f"{prefix}/diff/{REWARD_KEY}", signed=True)] if len(columns) > len(models) else []
        rows.append(f"{'reward fn':<11}" + "".join(f"{c:>24}" for c in cells))
    times = [metrics.get(f"{prefix}/{m}/s_per_image") for m in models]
    if None not in times:
        ratio = f"x{times[-1] / times[0]:.2f} time" if len(times) > 1 and times[0] else ""
        rows.append(f"{'s/image':<11}" + "".join(f"{t:>24.3f}" for t in times) + (f"{ratio:>24}" if ratio else ""))
    return rows


def _interval(metrics: dict, key: str, signed: bool) -> str:
    if key not in metrics:
        return "-"
    fmt = "+.3f" if signed else ".3f"
    return f"{metrics[key]:{fmt}} [{metrics[key + '_lo']:{fmt}}, {metrics[key + '_hi']:{fmt}}]"
