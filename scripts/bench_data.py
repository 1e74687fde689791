"""Data pipeline benchmark (issue 3).

1. Preprocessing throughput (decode + resize + crop + flip + tokenize, images/s) at 512^2:
   Ray Data (`build_dataset`) vs a torch DataLoader over HF `datasets` applying the very
   same per-row functions (the reference trainer's pipeline), same parquet, same CPUs.
2. Peak RSS of the driver and of the Ray processes while streaming 1x and 10x the rows
   (each in a fresh subprocess + fresh Ray), consuming batches like a trainer would.

Usage: .venv/bin/python scripts/bench_data.py [--rows 192] [--cpus N] [--image-size 640]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
RESOLUTION = 512
BATCH = 32


def make_data(root: Path, rows: int, image_size: int, copies: int) -> tuple[str, str]:
    """1x shards in root/x1 and `copies` renamed copies of them in root/x10."""
    from maskunet_platform.data.sample import write_sample

    one = root / "x1"
    write_sample(str(one), rows=rows, shards=4, seed=0, image_size=image_size)
    many = root / "x10"
    many.mkdir()
    for k in range(copies):
        for f in one.glob("*.parquet"):
            os.link(f, many / f"c{k:02d}-{f.name}")
    return str(one), str(many)


def run_ray(source: str, base: str, cpus: int, temp_dir: str) -> tuple[int, float]:
    import ray
    from maskunet_platform.config.data import DataSection
    from maskunet_platform.data.pipeline import build_dataset

    if not ray.is_initialized():
        ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = DataSection(source=source, resolution=RESOLUTION, flip=True, crop="random", preprocess_batch_size=BATCH)
    for _ in build_dataset(cfg, base, limit=BATCH).iter_batches(batch_size=BATCH):  # warm workers
        pass
    start, n = time.perf_counter(), 0
    for batch in build_dataset(cfg, base).iter_batches(batch_size=BATCH, batch_format="numpy"):
        n += len(batch["input_ids"])
    return n, time.perf_counter() - start


def run_dataloader(source: str, base: str, cpus: int) -> tuple[int, float]:
    import datasets
    import numpy as np
    import torch
    from maskunet_platform.data.preprocess import decode_image, image_to_array, load_tokenizer, tokenize

    files = sorted(str(p) for p in Path(source).glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    ds = ds.cast_column("image", datasets.Image(decode=False))  # decode with the same function

    def transform(batch):
        rng = np.random.default_rng()
        pixels = [image_to_array(decode_image(im["bytes"], RESOLUTION)[0], RESOLUTION, "random", True, rng)
                  for im in batch["image"]]
        ids = tokenize(batch["text"], load_tokenizer(base))
        return {"pixel_values": [torch.from_numpy(p) for p in pixels], "input_ids": list(torch.from_numpy(ids))}

    ds = ds.with_transform(transform, columns=["image", "text"])
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=cpus, persistent_workers=False)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["input_ids"])
    return n, time.perf_counter() - start


def rss_child(source: str, base: str, cpus: int, temp_dir: str) -> None:
    """Runs in a subprocess: stream `source`, sample RSS, print one JSON line."""
    import psutil

    me, peak = psutil.Process(), {"driver": 0, "ray": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            ray_rss = 0
            for child in me.children(recursive=True):
                try:
                    ray_rss += child.memory_info().rss
                except psutil.Error:
                    pass
            peak["driver"] = max(peak["driver"], me.memory_info().rss)
            peak["ray"] = max(peak["ray"], ray_rss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    n, seconds = run_ray(source, base, cpus, temp_dir)
    done.set()
    sampler.join()
    print(json.dumps({"rows": n, "seconds": seconds, **peak}))


def measure_rss(source: str, base: str, cpus: int, root: Path, tag: str) -> dict:
    cmd = [sys.executable, __file__, "--rss-child", source, "--base", base, "--cpus", str(cpus),
           "--temp-dir", str(root / f"ray-{tag}")]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=192)
    p.add_argument("--image-size", type=int, default=640, help="smallest source image side")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--base", default=None)
    p.add_argument("--rss-child", default=None)
    p.add_argument("--temp-dir", default=None)
    args = p.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.base, args.cpus, args.temp_dir)

    root = Path(tempfile.mkdtemp(prefix="bench-data-", dir="/tmp"))
    try:
        from maskunet.tiny import ensure_tiny_base

        base = args.base or str(ensure_tiny_base(root / "base"))
        one, many = make_data(root, args.rows, args.image_size, args.copies)
        print(f"data: {args.rows} rows (x1), {args.rows * args.copies} rows (x{args.copies}), source images "
              f"{args.image_size}-{int(args.image_size * 1.5)} px, output {RESOLUTION}^2, cpus={args.cpus}")
        n_dl, t_dl = run_dataloader(one, base, args.cpus)
        n_ray, t_ray = run_ray(one, base, args.cpus, str(root / "ray-tput"))
        import ray

        ray.shutdown()
        print(f"torch DataLoader + HF datasets: {n_dl} images in {t_dl:.2f} s = {n_dl / t_dl:.1f} images/s")
        print(f"Ray Data:                       {n_ray} images in {t_ray:.2f} s = {n_ray / t_ray:.1f} images/s")
        print(f"throughput ratio Ray/DataLoader: {(n_ray / t_ray) / (n_dl / t_dl):.2f} (target >= 1.0)")
        small = measure_rss(one, base, args.cpus, root, "x1")
        large = measure_rss(many, base, args.cpus, root, "x10")
        mb = 1 / 2 ** 20
        for tag, r in (("x1", small), (f"x{args.copies}", large)):
            print(f"peak RSS streaming {tag:>3} ({r['rows']} rows, {r['seconds']:.1f} s): "
                  f"driver {r['driver'] * mb:.0f} MiB, Ray processes {r['ray'] * mb:.0f} MiB")
        print(f"peak RSS growth x{args.copies}/x1: driver {large['driver'] / small['driver']:.2f}x, "
              f"Ray processes {large['ray'] / small['ray']:.2f}x (target <= 1.2x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
