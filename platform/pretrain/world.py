"""Training batches drawn from the shapes world, made exactly like the sample dataset's rows.

Row i of a stream is `sample_table`'s row i for the stream's seed: a 96-144 px image
(PNG or JPEG at random, never a benchmark caption), decoded and centre-cropped/resized
by the same `image_to_array` the training pipeline uses, so the base sees the pictures
mask training will see. Batches are made ahead on a background thread, or in worker
processes (a GPU steps faster than one core draws and decodes); rows depend only on their
index, so the stream is the same either way.
"""
from __future__ import annotations

import io
import multiprocessing
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from queue import Full, Queue

import numpy as np
import torch
from PIL import Image

from maskunet_platform.data.preprocess import image_to_array
from maskunet_platform.data.sample import sample_table


def shapes_rows(seed: int, start: int, size: int, resolution: int) -> tuple[np.ndarray, list[str]]:
    """Rows [start, start + size) of stream `seed`: uint8 pixels (B, 3, R, R) and captions."""
    table = sample_table(size, seed, start=start).to_pydict()
    pixels = np.empty((size, 3, resolution, resolution), np.uint8)
    rng = np.random.default_rng(0)  # unused: centre crop, no flip
    for i, image in enumerate(table["image"]):
        img = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
        image_to_array(img, resolution, "center", False, rng, out=pixels[i])
    return pixels, table["text"]


def shapes_batch(seed: int, start: int, size: int, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """The same rows with pixels in [-1, 1] as a float tensor."""
    pixels, captions = shapes_rows(seed, start, size, resolution)
    return torch.from_numpy(pixels).float().div_(127.5).sub_(1.0), captions


class ShapesStream:
    """Batches `first_batch`, `first_batch + 1`, ... of stream `seed`, made ahead of use:
    one at a time on a thread (workers=0), or 2 x workers in flight in worker processes."""

    def __init__(self, seed: int, batch_size: int, resolution: int, first_batch: int = 0, workers: int = 0):
        self.seed, self.batch_size, self.resolution = seed, batch_size, resolution
        self._next, self._workers = first_batch, workers
        self._queue: Queue = Queue(maxsize=max(1, workers))
        self._stop = threading.Event()
        # spawn, not fork: the parent may hold CUDA and OpenMP state a forked child must not inherit.
        self._pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                      if workers > 0 else None)
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _rows(self, index: int):
        args = (self.seed, index * self.batch_size, self.batch_size, self.resolution)
        return self._pool.submit(shapes_rows, *args) if self._pool else shapes_rows(*args)

    def _fill(self) -> None:
        try:
            self._make_batches()
        except BaseException as error:  # handed to the consumer: a dead producer must not hang it
            self._queue.put(error)

    def _make_batches(self) -> None:
        index, pending = self._next, deque()
        while not self._stop.is_set():
            while len(pending) < max(1, 2 * self._workers):
                pending.append(self._rows(index))
                index += 1
            rows = pending.popleft()
            pixels, captions = rows.result() if self._pool else rows
            batch = torch.from_numpy(pixels).float().div_(127.5).sub_(1.0), captions
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=0.2)
                    break
                except Full:
                    continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, list[str]]:
        batch = self._queue.get()
        if isinstance(batch, BaseException):
            raise RuntimeError("the shapes data stream failed") from batch
        return batch
