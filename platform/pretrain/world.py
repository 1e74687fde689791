"""Training batches drawn from the shapes world, made exactly like the sample dataset's rows.

Row i of a stream is `sample_table`'s row i for the stream's seed: a 96-144 px image
(PNG or JPEG at random, never a benchmark caption), decoded and centre-cropped/resized
by the same `image_to_array` the training pipeline uses, so the base sees the pictures
mask training will see. Rows are generated on a background thread, one batch ahead.
"""
from __future__ import annotations

import io
import threading
from queue import Full, Queue

import numpy as np
import torch
from PIL import Image

from maskunet_platform.data.preprocess import image_to_array
from maskunet_platform.data.sample import sample_table


def shapes_batch(seed: int, start: int, size: int, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Rows [start, start + size) of stream `seed`: pixels in [-1, 1] (B, 3, R, R) and captions."""
    table = sample_table(size, seed, start=start).to_pydict()
    pixels = np.empty((size, 3, resolution, resolution), np.uint8)
    rng = np.random.default_rng(0)  # unused: centre crop, no flip
    for i, image in enumerate(table["image"]):
        img = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
        image_to_array(img, resolution, "center", False, rng, out=pixels[i])
    return torch.from_numpy(pixels).float().div_(127.5).sub_(1.0), table["text"]


class ShapesStream:
    """Batches `first_batch`, `first_batch + 1`, ... of stream `seed`, prefetched one ahead."""

    def __init__(self, seed: int, batch_size: int, resolution: int, first_batch: int = 0):
        self.seed, self.batch_size, self.resolution = seed, batch_size, resolution
        self._next = first_batch
        self._queue: Queue = Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        index = self._next
        while not self._stop.is_set():
            batch = shapes_batch(self.seed, index * self.batch_size, self.batch_size, self.resolution)
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=0.2)
                    break
                except Full:
                    continue
            index += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, list[str]]:
        return self._queue.get()
