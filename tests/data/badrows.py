"""A laion-art-schema table of broken and awkward rows, with the expected outcome of each."""
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from maskunet_platform.data.sample import IMAGE_STRUCT


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 255] + [255, 0, 0] * 255)  # index 0 blue, but transparent
    return _png(img, transparency=0)


def _wide() -> bytes:
    arr = np.zeros((20, 400, 3), np.uint8)
    arr[:, :200] = (255, 0, 0)  # left half red, right half blue: a centred crop shows both
    arr[:, 200:] = (0, 0, 255)
    return _png(Image.fromarray(arr))


GOOD = "a red square"
# key -> (image bytes or None, caption, expected drop reason or None)
def bad_row_cases() -> dict:
    jpeg = _jpeg(Image.new("RGB", (64, 48), (0, 200, 0)))
    return {
        "corrupt": (b"\x89PNG\r\n\x1a\nnot really a png", GOOD, "undecodable"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], GOOD, "undecodable"),
        "null_image": (None, GOOD, "null_image"),
        "null_bytes": ("NULL_BYTES", GOOD, "null_image"),
        "empty_bytes": (b"", GOOD, "zero_size"),
        "empty_caption": (jpeg, "", "empty_caption"),
        "blank_caption": (jpeg, "   ", "empty_caption"),
        "null_caption": (jpeg, None, "empty_caption"),
        "one_pixel": (_png(Image.new("RGB", (1, 1), (255, 0, 0))), GOOD, None),
        "wide_20_1": (_wide(), GOOD, None),
        "grayscale": (_png(Image.new("L", (40, 30), 100)), GOOD, None),
        "palette_transparent": (_palette_with_transparency(), GOOD, None),
        "rgba": (_png(Image.new("RGBA", (30, 30), (0, 0, 255, 0))), GOOD, None),
        "la": (_png(Image.new("LA", (30, 30), (0, 255))), GOOD, None),
        "cmyk_jpeg": (_jpeg(Image.new("CMYK", (40, 40), (0, 255, 255, 0))), GOOD, None),
        "png16": (_png(Image.new("I;16", (30, 30), 128 * 257)), GOOD, None),
        "plain_jpeg": (jpeg, GOOD, None),
    }


def bad_rows_table() -> pa.Table:
    images, texts, keys = [], [], []
    for key, (data, caption, _) in bad_row_cases().items():
        if data is None:
            images.append(None)
        elif data == "NULL_BYTES":
            images.append({"bytes": None, "path": "x.png"})
        else:
            images.append({"bytes": data, "path": f"{key}.img"})
        texts.append(caption)
        keys.append(key)
    schema = pa.schema([("image", IMAGE_STRUCT), ("text", pa.string()), ("key", pa.string())])
    return pa.Table.from_pydict({"image": images, "text": texts, "key": keys}, schema=schema)
