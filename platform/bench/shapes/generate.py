"""Batched benchmark generation whose images do not depend on how they were batched.

Each (prompt, seed) item draws its initial latents from its own `torch.Generator` seeded
with `seed` (diffusers accepts one generator per sample), and the DDIM sampler adds no
further noise, so an item's image is the same in any batch, at any batch size, and in
either run of a paired (masks on / off) comparison.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from maskunet_platform.bench.shapes.prompts import BenchPrompt


def items(prompts: Sequence[BenchPrompt | str], seeds: Sequence[int]) -> list[tuple[BenchPrompt | str, int]]:
    """Every (prompt, seed) pair, prompt-major: the order of `generate_images`' output."""
    return [(p, int(s)) for p in prompts for s in seeds]


def _caption(prompt: BenchPrompt | str) -> str:
    return prompt.caption if isinstance(prompt, BenchPrompt) else str(prompt)


def _switch_masks(pipe, masks: bool | None) -> bool | None:
    """Set the pipe's mask switch; returns the previous state to restore (None: untouched)."""
    if masks is None:
        return None
    if not hasattr(type(pipe), "masks_enabled"):  # a plain StableDiffusionPipeline
        if masks:
            raise ValueError("masks=True needs a MaskUNetPipeline with a mask generator")
        return None
    previous = pipe.masks_enabled
    pipe.masks_enabled = masks  # raises if masks=True and the pipe has no mask generator
    return previous


def generate_images(pipe, prompts: Sequence[BenchPrompt | str], seeds: Sequence[int], steps: int,
                    guidance: float = 7.5, batch_size: int = 16, masks: bool | None = None,
                    on_batch: Callable[[int, int], None] | None = None,
                    resolution: int | None = None) -> list[np.ndarray]:
    """One uint8 HxWx3 image per (prompt, seed) pair, in `items(prompts, seeds)` order.

    `masks` True/False switches a MaskUNetPipeline's masks for this call (restored after);
    None leaves the pipe as it is. `on_batch(done, total)` is called after every batch.
    `resolution` defaults to the pipe's native size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    todo = items(prompts, seeds)
    size = {} if resolution is None else {"height": resolution, "width": resolution}
    previous = _switch_masks(pipe, masks)
    images: list[np.ndarray] = []
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            out = pipe(
                [_caption(p) for p, _ in batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                # CPU generators: the same latents whatever device the pipe runs on.
                generator=[torch.Generator().manual_seed(s) for _, s in batch],
                output_type="np",
                **size,
            ).images
            # Same rounding as diffusers' numpy_to_pil, without a PIL round trip.
            images.extend(np.clip(np.round(np.asarray(out) * 255), 0, 255).astype(np.uint8))
            if on_batch is not None:
                on_batch(len(images), len(todo))
    finally:
        if previous is not None:
            pipe.masks_enabled = previous
    return images


def generate_training_free(sampler, prompts: Sequence[BenchPrompt | str], seeds: Sequence[int], steps: int,
                           guidance: float = 7.5, on_batch: Callable[[int, int], None] | None = None,
                           resolution: int | None = None) -> list[np.ndarray]:
    """`generate_images` for a maskunet TrainingFreeSampler: one call per prompt, its seeds
    as one batch sharing that prompt's optimised masks; the same initial latents per
    (prompt, seed) as `generate_images`, so the two pair up item by item."""
    size = {} if resolution is None else {"height": resolution, "width": resolution}
    images: list[np.ndarray] = []
    total = len(prompts) * len(seeds)
    for prompt in prompts:
        out = sampler(_caption(prompt), num_inference_steps=steps, guidance_scale=guidance,
                      num_images_per_prompt=len(seeds), generator=[torch.Generator().manual_seed(int(s)) for s in seeds],
                      output_type="np", **size)
        images.extend(np.clip(np.round(np.asarray(out.images) * 255), 0, 255).astype(np.uint8))
        if on_batch is not None:
            on_batch(len(images), total)
    return images


def image_grid(images: Sequence, columns: int, pad: int = 2, fill=(255, 255, 255)) -> Image.Image:
    """Tile uint8 HxWx3 arrays or PIL images into one image, row by row, `pad` px apart."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    tiles = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8)) for im in images]
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (columns * w + (columns - 1) * pad, rows * h + (rows - 1) * pad), fill)
    for i, tile in enumerate(tiles):
        grid.paste(tile.convert("RGB"), ((i % columns) * (w + pad), (i // columns) * (h + pad)))
    return grid
