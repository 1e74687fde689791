"""One shapes-benchmark run: generate, detect, score, compare (paired), KID, image grid.

With masks and `compare`, the base (masks off) and the masked U-Net (masks on) draw the same
prompts with the same seeds, so their difference is paired per image. KID compares each
model's images with real renderings of the same prompts (another rendering seed).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from maskunet_platform.bench.shapes.detector import detect
from maskunet_platform.bench.shapes.features import image_features, kid
from maskunet_platform.bench.shapes.generate import generate_images, generate_training_free, image_grid
from maskunet_platform.bench.shapes.prompts import benchmark_prompts, real_images
from maskunet_platform.bench.shapes.scoring import CATEGORIES, paired_difference, score, summarize

GRID_PROMPTS = 8


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
        for category, d in (self.difference or {}).items():
            if d["mean"] is not None:
                out.update({f"{prefix}/diff/{category}": d["mean"], f"{prefix}/diff/{category}_lo": d["lo"],
                            f"{prefix}/diff/{category}_hi": d["hi"]})
        return out

    def to_json(self) -> dict:
        return {"settings": vars(self.settings), "items": self.items, "results": self.results,
                "kid": {k: {"mean": m, "std": s} for k, (m, s) in self.kid.items()}, "difference": self.difference}


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
        if model == "training_free":
            images[model] = generate_training_free(training_free, prompts, seeds, settings.steps, settings.guidance,
                                                   on_batch=progress)
        else:
            images[model] = generate_images(pipe, prompts, seeds, settings.steps, settings.guidance,
                                            settings.batch_size, masks=(model == "masked") if has_masks else None,
                                            on_batch=progress)
        pairs = [(p, s) for p in prompts for s in seeds]
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
    return rows


def _interval(metrics: dict, key: str, signed: bool) -> str:
    if key not in metrics:
        return "-"
    fmt = "+.3f" if signed else ".3f"
    return f"{metrics[key]:{fmt}} [{metrics[key + '_lo']:{fmt}}, {metrics[key + '_hi']:{fmt}}]"
