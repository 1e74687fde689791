"""Benchmark prompts (held-out captions of the shapes world) and their real images."""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from maskunet_platform.data.preprocess import decode_image, image_to_array
from maskunet_platform.data.sample import (
    COLOURS, SHAPES, SIZES, Shape, draw_scene, encode_image, is_benchmark_caption, random_scene, scene_caption,
)

# Real images are drawn like `sample_table(image_size=96)`: a side in [96, 144].
MIN_SIDE, MAX_SIDE = 96, 144
# A backstop: enough draws for every feasible request (checked against the one-shape pool).
MAX_DRAWS = 1_000_000


@dataclass
class BenchPrompt:
    caption: str
    shapes: list[Shape]
    background: str


def benchmark_prompts(n: int, seed: int = 0) -> list[BenchPrompt]:
    """`n` distinct held-out prompts, alternating one shape and two shapes.

    One seeded stream of scenes is split by shape count, so the first `n` prompts are
    the same for any larger `n` (a prefix), and both counts are always balanced.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if (n + 1) // 2 > one_shape_pool():
        raise ValueError(f"only {one_shape_pool()} one-shape benchmark captions exist: n <= {2 * one_shape_pool()}")
    rng = np.random.default_rng(seed)
    pools: dict[int, list[BenchPrompt]] = {1: [], 2: []}
    seen: set[str] = set()
    want = {1: (n + 1) // 2, 2: n // 2}
    for _ in range(MAX_DRAWS):
        if all(len(pools[k]) >= want[k] for k in pools):
            break
        shapes, background = random_scene(rng)
        caption = scene_caption(shapes, background)
        k = len(shapes)
        if len(pools[k]) < want[k] and caption not in seen and is_benchmark_caption(caption):
            seen.add(caption)
            pools[k].append(BenchPrompt(caption, shapes, background))
    else:
        raise ValueError(f"could not draw {n} distinct benchmark prompts (too many asked)")
    return [pools[1 + i % 2][i // 2] for i in range(n)]


@functools.lru_cache(maxsize=1)
def one_shape_pool() -> int:
    """How many distinct one-shape benchmark captions exist (half of the prompts are such)."""
    scenes = itertools.product(COLOURS, COLOURS, SHAPES, SIZES, range(3), range(3))
    return sum(is_benchmark_caption(scene_caption([Shape(kind, colour, size, row, col)], bg))
               for bg, colour, kind, size, row, col in scenes if colour != bg)


def real_image(prompt: BenchPrompt, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """One training-like rendering of `prompt`: uint8 (resolution, resolution, 3)."""
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    fmt = "JPEG" if rng.random() < 0.5 else "PNG"
    data = encode_image(draw_scene(prompt.shapes, prompt.background, side), fmt)
    # The training reader's decode (JPEG draft scaling included), then its crop + resize.
    img, _ = decode_image(data, resolution)
    chw = image_to_array(img, resolution, crop="center", flip=False, rng=rng)
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def real_images(prompts: list[BenchPrompt], resolution: int, seed: int = 0) -> list[np.ndarray]:
    """Each prompt rendered the way training data is made; image i depends on (seed, i)."""
    return [real_image(p, resolution, np.random.default_rng([seed, i])) for i, p in enumerate(prompts)]
