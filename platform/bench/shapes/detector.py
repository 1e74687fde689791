"""Read a shapes-world image back: background colour and, per 3x3 grid cell, (colour, kind).

Deterministic and image-only (no prompt); takes uint8 RGB of any size from 32 to 256 px:

- background: median of the border frame (shapes cover little of it), nearest palette colour;
- a cell is occupied when its middle holds enough foreground coverage (per pixel, how far
  it sits from the background towards the shape's colour); the foreground threshold rises
  with the image's noise, so noisy generated backgrounds do not fill every cell;
- colour: nearest palette colour in CIELAB (perceptual, so shifted colours of generated
  images still land on the closest name). Thin shapes (small rings at 64 px are ~1.5 px
  wide) have no pure pixels, so their most saturated pixels are matched against the
  bg->colour mixing line instead of the colour itself;
- kind: the cell's coverage map, cropped to the shape's bounding box, is compared with each
  kind's outline rendered at exactly that box size (same blur from resampling), so the
  match is insensitive to the shape's size and position inside the cell.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from maskunet_platform.data.sample import COLOURS, SHAPES, Shape, draw_scene

NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[n] for n in NAMES], np.float64)
# RGB distance from the background above which a pixel counts as foreground: well under the
# closest palette pair (yellow/orange, ~81), well over JPEG ringing on flat areas.
FG_THRESHOLD = 28.0
# ... or this many times the border's median distance from the background colour (a noise
# level): Gaussian noise of that level exceeds it in ~0.5% of pixels.
NOISE_FACTOR = 2.5
# Occupied cell: foreground coverage (sum of alpha) over this fraction of the cell. The
# smallest shape (a small ring) covers ~8%; antialiasing leaking from a neighbour ~1-2%.
MIN_COVERAGE = 0.035
INNER_MARGIN = 0.1  # fraction of the cell side left out on each side when counting coverage
# Lowest coverage assumed for a shape's most saturated pixels (thin rings: ~0.5-0.9).
MIN_MIX = 0.45
# Delta E charged per unit of assumed mixing (1 - coverage).
MIX_PENALTY = 10.0
# A shape's bounding box: pixels with at least this share of its peak coverage; its edges
# sit EDGE_INSET px inside the box's outer pixels (both tuned on rendered data, seed 2).
BOX_COVERAGE = 0.35
EDGE_INSET = 0.2
_TEMPLATE_CELL = 160  # px per grid cell of the high-resolution kind templates
# Zero margin around them: a 1 px observed box maps to ~300 template px of margin.
_TEMPLATE_PAD = 400


@dataclass(frozen=True)
class CellDetection:
    colour: str
    kind: str


@dataclass(frozen=True)
class Detection:
    background: str
    cells: tuple[CellDetection | None, ...]  # 9 cells, row-major (row * 3 + col)

    def at(self, row: int, col: int) -> CellDetection | None:
        return self.cells[row * 3 + col]

    def occupied(self) -> set[tuple[int, int]]:
        return {(i // 3, i % 3) for i, c in enumerate(self.cells) if c is not None}


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB 0..255 (..., 3) -> CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


PALETTE_LAB = srgb_to_lab(PALETTE)


def nearest_colour(rgb, exclude: str | None = None) -> str:
    """Palette name closest to `rgb` in CIELAB (Delta E 76)."""
    d = np.linalg.norm(PALETTE_LAB - srgb_to_lab(rgb), axis=-1)
    if exclude is not None:
        d[NAMES.index(exclude)] = np.inf
    return NAMES[int(np.argmin(d))]


def shape_colour(fg: np.ndarray, dist: np.ndarray, bg: np.ndarray, background: str) -> tuple[str, np.ndarray]:
    """(palette name, estimated opaque RGB) of a shape's foreground pixels `fg` (N, 3).

    The most saturated fifth of the pixels (farthest from the background) carries the
    colour; the rest is antialiased edge. Thin shapes (a small ring at 64 px is ~1.5 px
    wide) have no pure pixels at all, so each palette colour c is tried along its bg->c
    mixing line (antialiasing mixes linearly in sRGB), with a penalty per unit of assumed
    mixing so that a pure colour lying on another's line (gray on white->black) keeps its name.
    """
    top = fg[np.argsort(dist)[-max(2, len(fg) // 5):]]
    core = np.median(top, axis=0)  # the median shrugs off JPEG ringing
    t = np.linspace(MIN_MIX, 1.0, 23)[:, None]
    mixes = bg + t[..., None] * (PALETTE[None] - bg)  # (fraction, colour, rgb)
    cost = np.linalg.norm(srgb_to_lab(mixes) - srgb_to_lab(core), axis=-1) + MIX_PENALTY * (1 - t)
    cost[:, NAMES.index(background)] = np.inf
    i, k = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return NAMES[k], bg + (core - bg) / t[i, 0]  # the core extrapolated to full coverage


def _as_array(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    return arr.astype(np.float64)


def _background(arr: np.ndarray) -> tuple[np.ndarray, float]:
    """(median colour, noise level) of the border frame, which shapes barely touch."""
    k = max(1, min(arr.shape[:2]) // 32)
    frame = np.concatenate([arr[:k].reshape(-1, 3), arr[-k:].reshape(-1, 3),
                            arr[:, :k].reshape(-1, 3), arr[:, -k:].reshape(-1, 3)])
    bg = np.median(frame, axis=0)
    return bg, float(np.median(np.linalg.norm(frame - bg, axis=-1)))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def detect(image) -> Detection:
    """Background colour and the 9 cells' (colour, kind) or None of one uint8 RGB image."""
    arr = _as_array(image)
    bg, noise = _background(arr)
    background = nearest_colour(bg)
    # Noisy (e.g. generated) images: raise the bar so that noise alone is not a shape.
    threshold = max(FG_THRESHOLD, NOISE_FACTOR * noise)
    h, w = arr.shape[:2]
    ys = [round(h * i / 3) for i in range(4)]
    xs = [round(w * i / 3) for i in range(4)]
    cells = tuple(_cell(arr[ys[r]:ys[r + 1], xs[c]:xs[c + 1]], bg, background, threshold)
                  for r in range(3) for c in range(3))
    return Detection(background, cells)


def _cell(pixels: np.ndarray, bg: np.ndarray, background: str, threshold: float) -> CellDetection | None:
    diff = pixels - bg
    dist = np.linalg.norm(diff, axis=-1)
    fg = dist > threshold
    if fg.sum() < 2:
        return None
    colour, ref = shape_colour(pixels[fg], dist[fg], bg, background)
    axis = ref - bg
    alpha = np.clip(diff @ axis / max(float(axis @ axis), 1e-6), 0.0, 1.0)
    # Keep the soft antialiased rim next to foreground pixels, drop stray noise elsewhere.
    alpha[~_dilate(fg)] = 0.0
    # Coverage is counted away from the cell's edges: a neighbour's antialiased edge can
    # spill a pixel row over the boundary, while every shape covers the cell's middle.
    m = round(INNER_MARGIN * min(alpha.shape))
    if alpha[m:alpha.shape[0] - m, m:alpha.shape[1] - m].sum() < MIN_COVERAGE * alpha.size:
        return None
    return CellDetection(colour, classify_kind(alpha))


def classify_kind(alpha: np.ndarray) -> str:
    """Kind whose outline, rendered at the shape's bounding box, best matches the coverage map."""
    ys, xs = np.nonzero(alpha >= BOX_COVERAGE * alpha.max())
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    crop = np.pad(alpha, 1)[y0:y1 + 3, x0:x1 + 3]  # the box plus a 1 px margin
    errors = [np.abs(crop - _template(kind, y1 - y0 + 1, x1 - x0 + 1)).mean() for kind in SHAPES]
    return SHAPES[int(np.argmin(errors))]


@functools.lru_cache(maxsize=4096)
def _template(kind: str, h: int, w: int) -> np.ndarray:
    """Coverage of `kind` on an (h+2, w+2) grid whose inner h x w box holds the shape.

    The box's outer pixels are only partly covered, so the shape's true edges are placed
    EDGE_INSET px inside them; resampling with a box filter gives the template the same
    blur as the observed shape.
    """
    hi, (y0, y1, x0, x1) = _hires(kind)
    sy, sx = (y1 - y0) / (h - 2 * EDGE_INSET), (x1 - x0) / (w - 2 * EDGE_INSET)  # template px per observed px
    pad = 1 + EDGE_INSET
    box = (x0 - pad * sx, y0 - pad * sy, x0 + (w + 2 - pad) * sx, y0 + (h + 2 - pad) * sy)
    out = Image.fromarray(hi, "F").resize((w + 2, h + 2), Image.Resampling.BOX, box=box)
    return np.asarray(out, np.float64)


@functools.lru_cache(maxsize=len(SHAPES))
def _hires(kind: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """High-resolution coverage of `kind` and its box (y0, y1, x0, x1), end-exclusive."""
    # Drawn by the data generator itself, so the templates are the training shapes.
    img = draw_scene([Shape(kind, "white", "large", 1, 1)], "black", 3 * _TEMPLATE_CELL)
    lo, hi = COLOURS["black"][0], COLOURS["white"][0]
    alpha = np.pad((np.asarray(img, np.float32)[..., 0] - lo) / (hi - lo), _TEMPLATE_PAD)
    ys, xs = np.nonzero(alpha > 0.5)
    return alpha, (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
