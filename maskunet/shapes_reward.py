"""A differentiable reward for the shapes world that needs no weights.

It reads a caption of the shapes world ("a small red circle at the top left and a large
blue square in the center on a white background") and scores an image on the shapes
benchmark's notions (platform/bench/shapes): each named shape's colour in its 3x3 grid
cell, the other cells empty (showing the background), the background colour.

Per pixel, the similarity to a palette colour is a Gaussian of the RGB distance; cell
values are means over the cell (adaptive pooling), so everything is differentiable.
The vocabulary is a copy of the data generator's (maskunet never imports the platform); a
test checks that the two agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (240, 220, 30), "orange": (245, 140, 20), "purple": (130, 40, 170),
    "white": (250, 250, 250), "black": (10, 10, 10), "gray": (128, 128, 128),
    "pink": (245, 150, 190), "cyan": (40, 210, 220), "brown": (120, 70, 30),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")

# RGB distance scale (0..1 units) of the colour similarity: palette neighbours (yellow /
# orange) are ~0.32 apart, so a pixel matches one name, not its neighbours.
COLOUR_SCALE = 0.12
# Cell coverage at which a shape counts as present: a small shape covers ~8-20% of its cell.
COVERAGE_SCALE = 0.08
EMPTY_WEIGHT, BACKGROUND_WEIGHT = 0.5, 0.5

_PHRASE = re.compile(
    rf"an? (?:small|large) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) "
    rf"(in the center|at the (?:top|middle|bottom)(?: (?:left|center|right))?|at the (?:left|right))"
)
_BACKGROUND = re.compile(rf"on an? ({'|'.join(COLOURS)}) background")


@dataclass(frozen=True)
class ShapeTarget:
    colour: str
    row: int
    col: int


def _cell(where: str) -> tuple[int, int]:
    if where == "in the center":
        return 1, 1
    words = where.removeprefix("at the ").split()
    if len(words) == 2:
        return ROWS.index(words[0]), COLS.index(words[1])
    if words[0] in ROWS:
        return ROWS.index(words[0]), 1
    return 1, COLS.index(words[0])


def parse_caption(caption: str) -> tuple[list[ShapeTarget], str | None]:
    """(shapes, background) named by a shapes-world caption; background None if not named."""
    shapes = [ShapeTarget(colour, *_cell(where)) for colour, _kind, where in _PHRASE.findall(caption)]
    background = _BACKGROUND.search(caption)
    return shapes, background.group(1) if background else None


def _similarity(images: torch.Tensor, colour: str) -> torch.Tensor:
    """(B, H, W) in (0, 1]: how close each pixel is to the palette colour."""
    rgb = torch.tensor(COLOURS[colour], dtype=images.dtype, device=images.device) / 255.0
    dist2 = (images - rgb[None, :, None, None]).pow(2).sum(1)
    return torch.exp(-dist2 / (2 * COLOUR_SCALE**2))


def _cells(values: torch.Tensor) -> torch.Tensor:
    """(H, W) -> (3, 3) cell means."""
    return F.adaptive_avg_pool2d(values[None, None], 3)[0, 0]


def _border(values: torch.Tensor) -> torch.Tensor:
    k = max(1, min(values.shape) // 16)
    return torch.cat([values[:k].flatten(), values[-k:].flatten(), values[:, :k].flatten(), values[:, -k:].flatten()])


class ShapesReward:
    """reward(images (B, 3, H, W) in [0, 1], captions) -> (B,); higher is better.

    Per image: mean over named shapes of 1 - exp(-coverage / COVERAGE_SCALE) (the named
    colour in the named cell), minus EMPTY_WEIGHT x the mean non-background coverage of the
    unnamed cells, plus BACKGROUND_WEIGHT x the border's similarity to the named background.
    A caption naming no shape scores 0 on the shape term.
    """

    name = "shapes"

    def __call__(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        if images.shape[0] != len(captions):
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        return torch.stack([self._one(image, caption) for image, caption in zip(images, captions)])

    def _one(self, image: torch.Tensor, caption: str) -> torch.Tensor:
        shapes, background = parse_caption(caption)
        batch = image[None].float()
        total = image.new_zeros((), dtype=torch.float32)
        if shapes:
            present = [_cells(_similarity(batch, s.colour)[0])[s.row, s.col] for s in shapes]
            total = total + torch.stack([1 - torch.exp(-c / COVERAGE_SCALE) for c in present]).mean()
        if background is not None:
            bg = _similarity(batch, background)[0]
            empty = torch.ones(3, 3, dtype=torch.bool, device=image.device)
            for s in shapes:
                empty[s.row, s.col] = False
            total = total - EMPTY_WEIGHT * (1 - _cells(bg))[empty].mean()
            total = total + BACKGROUND_WEIGHT * _border(bg).mean()
        return total
