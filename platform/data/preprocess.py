"""CPU preprocessing: decode -> RGB -> resize/crop/flip -> uint8 CHW, plus tokenization.

`preprocess_batch` is the Ray Data `map_batches` function. Bad rows (null or empty image
bytes, undecodable bytes, empty/null captions, and rows failing the optional filters)
are dropped, never raised, and counted by reason in a `DropCounter` actor and the log.

Pixels stay uint8 (a quarter of float32's bytes) until the training worker scales them
to [-1, 1] (`model_inputs.pixels_to_model`).

Randomness (random crop, flip) comes from a per-row generator seeded by
(`seed`, a hash of the row's bytes and caption): in deterministic mode a row always gets
the same augmentation wherever and whenever it is processed; otherwise a fresh salt per
batch varies it between epochs. (The held-out split is decided per read unit when the
read is planned: see units.py.)
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

log = logging.getLogger("maskunet.data")

# Drop reasons (also the keys of the counts).
NULL_IMAGE, ZERO_SIZE, UNDECODABLE = "null_image", "zero_size", "undecodable"
EMPTY_CAPTION, TOO_SMALL, LOW_AESTHETIC = "empty_caption", "too_small", "low_aesthetic"
REASONS = (NULL_IMAGE, ZERO_SIZE, UNDECODABLE, EMPTY_CAPTION, TOO_SMALL, LOW_AESTHETIC)


class BadRow(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreprocessSpec:
    tokenizer_dir: str
    resolution: int = 64
    crop: str = "center"
    flip: bool = False
    seed: int = 0
    deterministic: bool = False
    image_column: str = "image"
    caption_column: str = "text"
    aesthetic_column: str = "aesthetic"
    min_side: int | None = None
    min_aesthetic: float | None = None
    passthrough: tuple[str, ...] = ()  # extra input columns copied to the output (tests, debugging)
    batch_size: int = 32  # rows per output block of `preprocess_blocks`


@functools.lru_cache(maxsize=4)
def load_tokenizer(base: str):
    # Cached per worker process: Ray reuses workers, so each loads the tokenizer once.
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")


def tokenize(captions: list[str], tokenizer) -> np.ndarray:
    ids = tokenizer(captions, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="np").input_ids
    return np.asarray(ids, dtype=np.int64)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited onto white; 16-bit is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # PIL's own convert clips 16-bit values at 255 (nearly all white): rescale instead.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes | None, resolution: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Bytes -> (loaded RGB image, original (w, h)), or BadRow(reason)."""
    if data is None:
        raise BadRow(NULL_IMAGE)
    if len(data) == 0:
        raise BadRow(ZERO_SIZE)
    try:
        img = Image.open(io.BytesIO(data))
        if img.width == 0 or img.height == 0:
            raise BadRow(ZERO_SIZE)
        original_size = img.size
        if resolution and img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying >= the target size.
            short = min(img.size)
            img.draft(None, (img.width * resolution // short, img.height * resolution // short))
        img = ImageOps.exif_transpose(img)
        img.load()
        return to_rgb(img), original_size
    except BadRow:
        raise
    except Exception as e:  # PIL raises many types for corrupt data; none may kill the job
        log.debug("undecodable image: %s", e)
        raise BadRow(UNDECODABLE) from None


def crop_window(size: tuple[int, int], crop: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """(x0, y0, side) of the square that is kept: centred, or placed at random."""
    w, h = size
    side = min(w, h)
    if crop == "random":
        return int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), side
    return (w - side) // 2, (h - side) // 2, side


def image_to_array(img: Image.Image, resolution: int, crop: str, flip: bool,
                   rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
    """RGB image -> uint8 (3, R, R), written into `out` when given.

    Crop first, then resize only the kept square (the same picture as resizing the whole
    image, without computing pixels that are thrown away). The resize is torch's
    antialiased bilinear on uint8: within 2 grey levels of PIL's BILINEAR (mean difference
    ~0.01) at about half its cost. The CHW layout is a view of the uint8 pixels, and the
    result is written straight into `out` (e.g. a row of the preallocated batch).
    """
    import torch  # here, not at import: Ray Train's controller imports this module only to plan the dataset

    x0, y0, side = crop_window(img.size, crop, rng)
    with warnings.catch_warnings():  # PIL's buffer is read-only; nothing here writes to it
        warnings.simplefilter("ignore", UserWarning)
        hwc = torch.from_numpy(np.asarray(img))[y0:y0 + side, x0:x0 + side]
    chw = torch.nn.functional.interpolate(hwc.permute(2, 0, 1)[None], size=(resolution, resolution),
                                          mode="bilinear", antialias=True, align_corners=False)[0]
    if flip and rng.random() < 0.5:
        chw = chw.flip(-1)
    if out is None:
        out = np.empty((3, resolution, resolution), np.uint8)
    torch.from_numpy(out).copy_(chw)
    return out


def row_hash(image: bytes | None, caption: str | None) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(image or b"")
    h.update(b"\0")
    h.update((caption or "").encode("utf-8", "replace"))
    return int.from_bytes(h.digest(), "little")


def _image_bytes(table: pa.Table, column: str) -> list:
    col = table.column(column)
    if pa.types.is_struct(col.type):
        col = pa.chunked_array([c.field("bytes") for c in col.chunks], col.type.field("bytes").type)
    return col.to_pylist()


def check_row(spec: PreprocessSpec, image: bytes | None, caption, aesthetic) -> Image.Image:
    """The decoded image of a good row, or BadRow(reason). Cheap checks go first."""
    if image is None:
        raise BadRow(NULL_IMAGE)
    if caption is None or not str(caption).strip():
        raise BadRow(EMPTY_CAPTION)
    if spec.min_aesthetic is not None and (aesthetic is None or aesthetic < spec.min_aesthetic):
        raise BadRow(LOW_AESTHETIC)
    img, original_size = decode_image(image, spec.resolution)
    # Compare the original size: a JPEG draft may have decoded it smaller.
    if spec.min_side is not None and min(original_size) < spec.min_side:
        raise BadRow(TOO_SMALL)
    return img


def preprocess_batch(table: pa.Table, spec: PreprocessSpec, counter=None) -> dict[str, np.ndarray]:
    """map_batches fn: pyarrow rows in -> {"pixel_values", "input_ids", *passthrough}."""
    images = _image_bytes(table, spec.image_column)
    captions = table.column(spec.caption_column).to_pylist()
    scores = (table.column(spec.aesthetic_column).to_pylist()
              if spec.min_aesthetic is not None else [None] * len(images))
    salt = [] if spec.deterministic else [int.from_bytes(os.urandom(8), "little")]
    r = spec.resolution
    pixels = np.empty((len(images), 3, r, r), np.uint8)  # kept rows are written in place
    kept_captions, kept_idx, dropped = [], [], Counter()
    for i, (image, caption, score) in enumerate(zip(images, captions, scores)):
        try:
            img = check_row(spec, image, caption, score)
        except BadRow as bad:
            dropped[bad.reason] += 1
            continue
        rng = np.random.default_rng([spec.seed, row_hash(image, caption), *salt])
        image_to_array(img, r, spec.crop, spec.flip, rng, out=pixels[len(kept_idx)])
        kept_captions.append(str(caption))
        kept_idx.append(i)
    n = len(kept_idx)
    out = {
        "pixel_values": pixels if n == len(images) else pixels[:n].copy(),
        "input_ids": tokenize(kept_captions, load_tokenizer(spec.tokenizer_dir)) if kept_captions
        else np.zeros((0, 77), np.int64),
    }
    for name in spec.passthrough:
        column = table.column(name).take(pa.array(kept_idx, pa.int64()))
        numeric = pa.types.is_floating(column.type) or pa.types.is_integer(column.type)
        out[name] = column.to_numpy() if numeric else np.asarray(column.to_pylist(), dtype=object)
    _report(counter, len(images), n, dropped)
    return out


def preprocess_blocks(table: pa.Table, spec: PreprocessSpec, counter=None):
    """map_batches generator: any number of rows in -> one output per `spec.batch_size` rows.

    The read is fused into this stage and hands it whatever it read (up to Ray's target
    block size); slicing here keeps every output block one training-sized batch. Batches
    left with no rows (all dropped) yield nothing.
    """
    for start in range(0, table.num_rows, spec.batch_size):
        out = preprocess_batch(table.slice(start, spec.batch_size), spec, counter)
        if len(out["input_ids"]):  # Ray stores an empty tensor column as pickled objects
            yield out


def _report(counter, rows_in: int, rows_out: int, dropped: Counter) -> None:
    if dropped:
        log.warning("data: dropped %d of %d rows in a batch: %s", sum(dropped.values()), rows_in, dict(dropped))
    if counter is not None:
        import ray

        try:
            ray.get(counter.add.remote(rows_in, rows_out, dict(dropped)))
        except ray.exceptions.RayActorError as e:  # losing a metric must not kill the job
            log.warning("data: drop counter unavailable, counts for this batch not recorded: %s", e)
