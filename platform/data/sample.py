"""Synthetic laion-art: procedurally drawn shapes whose captions truly describe them.

The shards have the real dataset's schema (`image` = struct{bytes, path}, `text`,
`aesthetic`) plus the Hugging Face feature metadata, so the same reader, `datasets`
and the Hub viewer all treat them like laion-art. Every caption names each shape's
size, colour, kind and position and the background colour, using only words that the
tiny tokenizer has whole-word tokens for, so text conditioning is learnable.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

# One vocabulary for the data, the training-free shapes reward and the benchmark; 3x3 grid
# cells -> caption phrase ("at the top left", "in the center", ...).
from maskunet.shapes_reward import COLOURS, COLS, ROWS, SHAPES
from maskunet_platform.data.uri import resolve_output
SIZES = {"small": 0.25, "large": 0.45}  # radius as a fraction of a grid cell's side
HOLDOUT_MODULUS = 32

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [("image", IMAGE_STRUCT), ("text", pa.string()), ("aesthetic", pa.float64())],
    metadata={
        # What `datasets` writes for laion-art: decodes `image` as an Image feature.
        b"huggingface": json.dumps({"info": {"features": {
            "image": {"_type": "Image"},
            "text": {"dtype": "string", "_type": "Value"},
            "aesthetic": {"dtype": "float64", "_type": "Value"},
        }}}).encode()
    },
)


@dataclass
class Shape:
    kind: str
    colour: str
    size: str
    row: int
    col: int

    def phrase(self) -> str:
        r, c = ROWS[self.row], COLS[self.col]
        if (r, c) == ("middle", "center"):
            where = "in the center"
        elif r == "middle":
            where = f"at the {c}"
        elif c == "center":
            where = f"at the {r}"
        else:
            where = f"at the {r} {c}"
        return f"a {self.size} {self.colour} {self.kind} {where}"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, side: int) -> None:
    cx = (shape.col + 0.5) * side / 3
    cy = (shape.row + 0.5) * side / 3
    r = SIZES[shape.size] * side / 3
    fill = COLOURS[shape.colour]
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.kind == "square":
        draw.rectangle(box, fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape.kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    else:  # cross
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


def scene_caption(shapes: list[Shape], background: str) -> str:
    return " and ".join(s.phrase() for s in shapes) + f" on a {background} background"


def draw_scene(shapes: list[Shape], background: str, side: int) -> Image.Image:
    image = Image.new("RGB", (side, side), COLOURS[background])
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        _draw_shape(draw, shape, side)
    return image


def is_benchmark_caption(caption: str) -> bool:
    """Captions reserved for the shapes benchmark: never drawn as training data (1 in 32)."""
    return hashlib.sha256(caption.encode()).digest()[0] % HOLDOUT_MODULUS == 0


def random_scene(rng: np.random.Generator) -> tuple[list[Shape], str]:
    """1-2 shapes in distinct grid cells on a background of another colour."""
    background = str(rng.choice(list(COLOURS)))
    cells = rng.choice(9, size=int(rng.integers(1, 3)), replace=False)
    shapes = []
    for cell in cells:
        colour = str(rng.choice([c for c in COLOURS if c != background]))
        shapes.append(Shape(str(rng.choice(SHAPES)), colour, str(rng.choice(list(SIZES))),
                            int(cell) // 3, int(cell) % 3))
    return shapes, background


def training_scene(rng: np.random.Generator) -> tuple[list[Shape], str, str]:
    """(shapes, background, caption) of a random scene whose caption is not a benchmark caption."""
    while True:
        shapes, background = random_scene(rng)
        caption = scene_caption(shapes, background)
        if not is_benchmark_caption(caption):
            return shapes, background, caption


def make_example(rng: np.random.Generator, side: int) -> tuple[Image.Image, str]:
    """One training image with 1-2 shapes and its caption (never a benchmark caption)."""
    shapes, background, caption = training_scene(rng)
    return draw_scene(shapes, background, side), caption


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG", compress_level=1)  # fast to write, still lossless
    return buf.getvalue()


def sample_table(rows: int, seed: int, start: int = 0, image_size: int = 96) -> pa.Table:
    """`rows` examples (PNG and JPEG mixed); row i depends only on (seed, start + i)."""
    images, texts, scores = [], [], []
    for i in range(start, start + rows):
        rng = np.random.default_rng([seed, i])
        # Square images: any crop keeps every shape, so the caption stays true.
        side = int(rng.integers(image_size, math.ceil(image_size * 1.5) + 1))
        image, caption = make_example(rng, side)
        fmt = "JPEG" if rng.random() < 0.5 else "PNG"
        images.append({"bytes": encode_image(image, fmt), "path": f"{i:08d}.{fmt.lower()[:3]}"})
        texts.append(caption)
        scores.append(round(float(rng.uniform(4.5, 8.0)), 3))
    return pa.Table.from_pydict({"image": images, "text": texts, "aesthetic": scores}, schema=SCHEMA)


def write_sample(out: str, rows: int, shards: int = 1, seed: int = 0, image_size: int = 96,
                 endpoint_url: str | None = None) -> list[str]:
    """Write `rows` examples as `shards` parquet files under `out` (local dir or s3://)."""
    if rows < 1 or shards < 1:
        raise ValueError(f"rows ({rows}) and shards ({shards}) must both be >= 1")
    if shards > rows:
        raise ValueError(f"shards ({shards}) cannot exceed rows ({rows})")
    fs, base = resolve_output(out, endpoint_url)
    fs.create_dir(base, recursive=True)
    written, start = [], 0
    for k in range(shards):
        n = rows // shards + (1 if k < rows % shards else 0)
        path = f"{base.rstrip('/')}/train-{k:05d}-of-{shards:05d}.parquet"
        pq.write_table(sample_table(n, seed, start, image_size), path, filesystem=fs)
        written.append(path)
        start += n
    return written
