"""Data pipeline benchmark (issue 3).

1. Preprocessing throughput (decode + resize + crop + flip + normalise + tokenize,
   images/s) at 512^2: Ray Data (`build_dataset`, consumed with `iter_torch_batches` like
   the trainer) vs a torch DataLoader over HF `datasets` (the reference trainer's
   pipeline: `load_dataset("parquet")` + `with_transform`, `num_workers` = CPUs,
   persistent workers, default collate) applying the very same per-row functions
   (`decode_image`, `image_to_array`, `tokenize`), same parquet, same CPU count.
   Each side runs in its own fresh subprocess; sides alternate for `--repeats` rounds so
   background load hits both alike. Per side: start-up cost (process start to the end of
   the first, cold epoch, which includes `ray.init` / HF's parquet->arrow conversion /
   worker imports) is reported separately from steady-state throughput (a second, warm
   epoch over the same rows). The ratio uses the median warm throughput of each side.
2. Peak memory while streaming 1x and 10x the rows (fresh subprocess + fresh Ray each):
   a warm-up epoch over the 1x rows first, then peaks are reset and the timed stream is
   sampled every 0.1 s: driver RSS, the sum of RSS over all Ray processes (children of
   the driver: raylet/plasma, GCS, workers), and the same sum as PSS (shared pages such
   as the object store counted once instead of once per mapping process).

Usage: .venv/bin/python scripts/bench_data.py [--rows 512] [--cpus N] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
    """1x shards in root/x1 and `copies` hard-linked copies of them in root/x10."""
    from maskunet_platform.data.sample import write_sample

    one = root / "x1"
    write_sample(str(one), rows=rows, shards=4, seed=0, image_size=image_size)
    many = root / "x10"
    many.mkdir()
    for k in range(copies):
        for f in one.glob("*.parquet"):
            os.link(f, many / f"c{k:02d}-{f.name}")
    return str(one), str(many)


def _ray_epoch(source: str, base: str, limit: int | None = None) -> int:
    from maskunet_platform.config.data import DataSection
    from maskunet_platform.data.pipeline import build_dataset

    cfg = DataSection(source=source, resolution=RESOLUTION, flip=True, crop="random", preprocess_batch_size=BATCH)
    n = 0
    for batch in build_dataset(cfg, base, limit=limit).iter_torch_batches(batch_size=BATCH):
        n += len(batch["input_ids"])
    return n


def _start_ray(cpus: int, temp_dir: str) -> None:
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def cpu_seconds() -> float:
    """User + system CPU time of this process and all its descendants (Ray's or the loader's)."""
    import psutil

    me, total = psutil.Process(), 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def tput_ray(source: str, base: str, cpus: int, temp_dir: str) -> dict:
    t0 = time.perf_counter()
    _start_ray(cpus, temp_dir)
    init_s = time.perf_counter() - t0
    _ray_epoch(source, base)  # cold epoch: worker start, imports, tokenizer load
    cold_s = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), cpu_seconds()
    n = _ray_epoch(source, base)
    return {"startup_s": cold_s, "init_s": init_s, "rows": n, "seconds": time.perf_counter() - t1,
            "cpu_s": cpu_seconds() - c1}


def _dataloader(source: str, base: str, cpus: int, cache_dir: str):
    import datasets
    import numpy as np
    import torch
    from maskunet_platform.data.preprocess import decode_image, image_to_array, load_tokenizer, tokenize

    files = sorted(str(p) for p in Path(source).glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache_dir)
    ds = ds.cast_column("image", datasets.Image(decode=False))  # decode with the same function

    def transform(batch):
        rng = np.random.default_rng()
        pixels = [torch.from_numpy(image_to_array(decode_image(im["bytes"], RESOLUTION)[0], RESOLUTION,
                                                  "random", True, rng)) for im in batch["image"]]
        ids = tokenize(batch["text"], load_tokenizer(base))
        return {"pixel_values": pixels, "input_ids": list(torch.from_numpy(ids))}

    ds = ds.with_transform(transform, columns=["image", "text"])
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=cpus, persistent_workers=True)


def tput_dataloader(source: str, base: str, cpus: int, cache_dir: str) -> dict:
    t0 = time.perf_counter()
    loader = _dataloader(source, base, cpus, cache_dir)
    for _ in loader:  # cold epoch: HF parquet -> arrow cache, worker fork, tokenizer load
        pass
    cold_s = time.perf_counter() - t0
    t1, c1, n = time.perf_counter(), cpu_seconds(), 0
    for batch in loader:
        n += len(batch["input_ids"])
    return {"startup_s": cold_s, "rows": n, "seconds": time.perf_counter() - t1, "cpu_s": cpu_seconds() - c1}


def _rss_sampler(peak: dict, done: threading.Event) -> None:
    import psutil

    me = psutil.Process()
    while not done.is_set():
        rss = pss = 0
        for child in me.children(recursive=True):
            try:
                rss += child.memory_info().rss
                pss += child.memory_full_info().pss
            except psutil.Error:
                pass
        if peak.pop("reset", False):
            peak.update(driver=0, ray=0, ray_pss=0)
        peak["driver"] = max(peak["driver"], me.memory_info().rss)
        peak["ray"], peak["ray_pss"] = max(peak["ray"], rss), max(peak["ray_pss"], pss)
        done.wait(0.1)


def rss_ray(source: str, base: str, cpus: int, temp_dir: str, warmup: str) -> dict:
    peak, done = {"driver": 0, "ray": 0, "ray_pss": 0}, threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(peak, done), daemon=True)
    sampler.start()
    _start_ray(cpus, temp_dir)
    _ray_epoch(warmup, base)  # warm-up: every worker started and imported
    peak["reset"] = True
    time.sleep(0.3)
    t0 = time.perf_counter()
    n = _ray_epoch(source, base)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    return {"rows": n, "seconds": seconds, **peak}


def child(argv: list[str]) -> dict:
    mode, source, base, cpus, scratch, extra = argv[0], argv[1], argv[2], int(argv[3]), argv[4], argv[5]
    if mode == "dl":
        return tput_dataloader(source, base, cpus, scratch)
    if mode == "ray":
        return tput_ray(source, base, cpus, scratch)
    return rss_ray(source, base, cpus, scratch, extra)


def run_child(mode: str, source: str, base: str, cpus: int, scratch: Path, extra: str = "-") -> dict:
    if scratch.exists():
        shutil.rmtree(scratch)  # every run starts cold: no HF cache, no Ray session left over
    cmd = [sys.executable, __file__, "--child", mode, source, base, str(cpus), str(scratch), extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def throughput(one: str, base: str, cpus: int, root: Path, repeats: int) -> None:
    runs: dict[str, list[dict]] = {"dl": [], "ray": []}
    for i in range(repeats):
        for mode in ("dl", "ray") if i % 2 == 0 else ("ray", "dl"):
            runs[mode].append(run_child(mode, one, base, cpus, root / f"scratch-{mode}"))
    names = {"dl": "torch DataLoader + HF datasets", "ray": "Ray Data (build_dataset)"}
    rate = {}
    for mode, rs in runs.items():
        rates = [r["rows"] / r["seconds"] for r in rs]
        rate[mode] = statistics.median(rates)
        extra = "".join(f", ray.init {r['init_s']:.1f}" for r in rs[:1] if "init_s" in r)
        startup = ", ".join(f"{r['startup_s']:.1f}" for r in rs)
        print(f"{names[mode]:<31} {rs[0]['rows']} images/epoch, warm epochs: "
              f"{', '.join(f'{x:.1f}' for x in rates)} images/s (median {rate[mode]:.1f}); "
              f"start-up (process start to end of cold epoch): "
              f"{startup} s{extra}")
    print(f"throughput ratio Ray/DataLoader (median warm): {rate['ray'] / rate['dl']:.2f} (target >= 1.0)")
    # Wall-clock rates swing with background load; CPU cost per image (all processes of
    # each side) barely does, so it says which pipeline would win on quiet cores.
    eff = {m: statistics.median(r["rows"] / r["cpu_s"] for r in rs) for m, rs in runs.items()}
    print(f"CPU efficiency (warm, images per CPU-second, all processes): DataLoader {eff['dl']:.1f}, "
          f"Ray {eff['ray']:.1f}, ratio Ray/DataLoader {eff['ray'] / eff['dl']:.2f}; on {cpus} idle cores that is "
          f"<= {eff['dl'] * cpus:.0f} vs <= {eff['ray'] * cpus:.0f} images/s")


def memory(one: str, many: str, base: str, cpus: int, root: Path, copies: int) -> None:
    small = run_child("rss", one, base, cpus, root / "scratch-rss", one)
    large = run_child("rss", many, base, cpus, root / "scratch-rss", one)
    mb = 1 / 2 ** 20
    for tag, r in (("x1", small), (f"x{copies}", large)):
        print(f"peak memory streaming {tag:>3} ({r['rows']} rows, {r['seconds']:.1f} s, "
              f"{r['rows'] / r['seconds']:.1f} images/s): driver RSS {r['driver'] * mb:.0f} MiB, "
              f"Ray processes RSS {r['ray'] * mb:.0f} MiB (PSS {r['ray_pss'] * mb:.0f} MiB)")
    g = {k: large[k] / small[k] for k in ("driver", "ray", "ray_pss")}
    total = (large["driver"] + large["ray"]) / (small["driver"] + small["ray"])
    print(f"peak memory growth x{copies}/x1: driver RSS {g['driver']:.2f}x, Ray processes RSS {g['ray']:.2f}x "
          f"(PSS {g['ray_pss']:.2f}x), driver + Ray RSS {total:.2f}x (target <= 1.2x)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2:])))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--image-size", type=int, default=640, help="smallest source image side")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="throughput rounds per side")
    p.add_argument("--base", default=None)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-data-", dir="/tmp"))
    try:
        from maskunet.tiny import ensure_tiny_base

        base = args.base or str(ensure_tiny_base(root / "base"))
        one, many = make_data(root, args.rows, args.image_size, args.copies)
        print(f"data: {args.rows} rows (x1), {args.rows * args.copies} rows (x{args.copies}), 4 shards per x1, "
              f"source images {args.image_size}-{int(args.image_size * 1.5)} px (half JPEG, half PNG), "
              f"output {RESOLUTION}^2, batch {BATCH}, cpus={args.cpus}, load avg {os.getloadavg()[0]:.1f}")
        throughput(one, base, args.cpus, root, args.repeats)
        if not args.skip_memory:
            memory(one, many, base, args.cpus, root, args.copies)
        print(f"load avg at end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
