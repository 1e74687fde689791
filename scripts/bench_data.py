"""Data pipeline benchmark (issue 3).

1. Preprocessing throughput (decode + RGB + resize + crop + flip + normalise + tokenize,
   images/s) at 512^2, same parquet, same CPU count, three pipelines:
   - "ray":  Ray Data (`build_dataset`, consumed with `iter_torch_batches` like the trainer);
   - "ref":  the reference trainer's pipeline, the baseline of the issue: a torch
             DataLoader (`num_workers` = CPUs, persistent workers) over HF `datasets`
             (`load_dataset("parquet")`, `datasets.Image` decoding, `with_transform`) with
             torchvision's transforms Resize(512, BILINEAR), CenterCrop, RandomHorizontalFlip,
             ToTensor, Normalize([0.5], [0.5]). They are spelled out below as the PIL/torch
             calls torchvision makes for PIL input, because torchvision's PyPI wheel does
             not load against the CPU build of torch this project pins;
   - "dl":   the same DataLoader + HF datasets, but applying this platform's own per-row
             functions (`decode_image`, `image_to_array`, `tokenize`): a control that gives
             both sides identical per-image work, so its ratio isolates pipeline overhead.
   "ray" and "dl" deliver uint8 pixels (the trainer scales them on its device); the timed
   loop scales them to [-1, 1] float32 in the consumer, so every pipeline ends with the
   reference's float tensors and that work is counted against this platform.
   Each run is a fresh subprocess; pipelines alternate for `--repeats` rounds so background
   load hits all alike. Each run makes a cold pass (process start to its end: `ray.init`,
   HF's parquet -> arrow conversion, worker start and imports), reported as start-up, then
   a warm pass over the same rows, which gives the throughput (its time to the first
   batch, the per-epoch start latency, is printed too). The ratios use median warm
   throughputs. `--copies` hard-linked copies of the shards make the stream long enough
   that per-epoch fixed costs weigh about as little as they do on a real epoch.
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
CROP = "center"  # the paper's recipe: center crop, random flip


def link_copies(src: str, dest: Path, copies: int) -> str:
    """`copies` hard-linked copies of the parquet shards of `src` in `dest`."""
    dest.mkdir()
    for k in range(copies):
        for f in Path(src).glob("*.parquet"):
            os.link(f, dest / f"c{k:02d}-{f.name}")
    return str(dest)


def make_data(root: Path, rows: int, image_size: int) -> str:
    from maskunet_platform.data.sample import write_sample

    write_sample(str(root / "x1"), rows=rows, shards=4, seed=0, image_size=image_size)
    return str(root / "x1")


def _ray_batches(source: str, base: str):
    from maskunet_platform.config.data import DataSection
    from maskunet_platform.data.pipeline import build_dataset

    cfg = DataSection(source=source, resolution=RESOLUTION, crop=CROP, flip=True, preprocess_batch_size=BATCH)
    return build_dataset(cfg, base).iter_torch_batches(batch_size=BATCH)


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


def timed_pass(batches) -> dict:
    import torch
    from maskunet_platform.data.model_inputs import pixels_to_model

    t0, c0, n, first = time.perf_counter(), cpu_seconds(), 0, None
    for batch in batches:
        pixels_to_model(batch["pixel_values"], torch.float32)  # uint8 -> [-1, 1], as the trainer does
        n += len(batch["input_ids"])
        first = first or time.perf_counter() - t0
    return {"rows": n, "seconds": time.perf_counter() - t0, "first_batch_s": first, "cpu_s": cpu_seconds() - c0}


def reference_transform(tokenizer):
    """The reference trainer's per-batch transform: torchvision's Resize(R, BILINEAR),
    CenterCrop(R), RandomHorizontalFlip(), ToTensor(), Normalize([0.5], [0.5]) on PIL
    images decoded by `datasets`, written as the calls torchvision makes for PIL input."""
    import numpy as np
    import torch
    from PIL import Image

    r = RESOLUTION

    def to_pixels(img: Image.Image):
        img = img.convert("RGB")
        w, h = img.size
        short, long = min(w, h), max(w, h)
        if short != r:  # Resize(r): shorter side -> r, longer side truncated like torchvision
            img = img.resize((r, int(r * long / short)) if w <= h else (int(r * long / short), r), Image.BILINEAR)
        w, h = img.size
        left, top = int(round((w - r) / 2.0)), int(round((h - r) / 2.0))  # CenterCrop(r)
        img = img.crop((left, top, left + r, top + r))
        if torch.rand(1) < 0.5:  # RandomHorizontalFlip()
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(r, r, 3)  # ToTensor()
        t = t.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return t.clone().sub_(0.5).div_(0.5)  # Normalize([0.5], [0.5]) (not in place)

    def transform(batch):
        ids = tokenizer(batch["text"], max_length=tokenizer.model_max_length, padding="max_length",
                        truncation=True, return_tensors="pt").input_ids
        return {"pixel_values": [to_pixels(im) for im in batch["image"]], "input_ids": list(ids)}

    return transform


def platform_transform(tokenizer):
    """The same per-row functions the Ray pipeline runs (the control)."""
    import numpy as np
    import torch
    from maskunet_platform.data.preprocess import decode_image, image_to_array, tokenize

    def transform(batch):
        rng = np.random.default_rng()
        pixels = [torch.from_numpy(image_to_array(decode_image(im["bytes"], RESOLUTION)[0], RESOLUTION, CROP,
                                                  True, rng)) for im in batch["image"]]
        return {"pixel_values": pixels, "input_ids": list(torch.from_numpy(tokenize(batch["text"], tokenizer)))}

    return transform


def _dataloader(source: str, base: str, cpus: int, cache_dir: str, reference: bool):
    import datasets
    import torch
    from maskunet_platform.data.preprocess import load_tokenizer

    files = sorted(str(p) for p in Path(source).glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache_dir)
    ds = ds.cast_column("image", datasets.Image(decode=reference))  # the control decodes itself
    make = reference_transform if reference else platform_transform
    ds = ds.with_transform(make(load_tokenizer(base)), columns=["image", "text"])
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=cpus, persistent_workers=True)


def tput(mode: str, source: str, base: str, cpus: int, scratch: str) -> dict:
    t0 = time.perf_counter()
    if mode == "ray":
        _start_ray(cpus, scratch)
        passes = lambda: _ray_batches(source, base)  # noqa: E731 - a new execution per epoch, like training
    else:
        loader = _dataloader(source, base, cpus, scratch, reference=mode == "ref")
        passes = lambda: loader  # noqa: E731
    timed_pass(passes())  # cold: Ray start / HF arrow conversion, worker start, imports, tokenizer
    return {"startup_s": time.perf_counter() - t0, **timed_pass(passes())}


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
    timed_pass(_ray_batches(warmup, base))  # warm-up: every worker started and imported
    peak["reset"] = True
    time.sleep(0.3)
    stream = timed_pass(_ray_batches(source, base))
    done.set()
    sampler.join()
    return {"rows": stream["rows"], "seconds": stream["seconds"], **peak}


def child(argv: list[str]) -> dict:
    mode, source, base, cpus, scratch, extra = argv[0], argv[1], argv[2], int(argv[3]), argv[4], argv[5]
    if mode == "rss":
        return rss_ray(source, base, cpus, scratch, extra)
    return tput(mode, source, base, cpus, scratch)


def run_child(mode: str, source: str, base: str, cpus: int, scratch: Path, extra: str = "-") -> dict:
    if scratch.exists():
        shutil.rmtree(scratch)  # every run starts cold: no HF cache, no Ray session left over
    cmd = [sys.executable, __file__, "--child", mode, source, base, str(cpus), str(scratch), extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


NAMES = {"ray": "Ray Data (build_dataset)", "ref": "reference: DataLoader + HF datasets + torchvision ops",
         "dl": "control: DataLoader + HF datasets + platform fns"}


def throughput(source: str, base: str, cpus: int, root: Path, repeats: int) -> None:
    runs: dict[str, list[dict]] = {m: [] for m in NAMES}
    for i in range(repeats):
        for mode in list(NAMES)[i % 3:] + list(NAMES)[:i % 3]:
            runs[mode].append(run_child(mode, source, base, cpus, root / f"scratch-{mode}"))
    rate, eff = {}, {}
    for mode, rs in runs.items():
        rates = [r["rows"] / r["seconds"] for r in rs]
        rate[mode] = statistics.median(rates)
        eff[mode] = statistics.median(r["rows"] / r["cpu_s"] for r in rs)
        seq = lambda key, fmt: ", ".join(format(r[key], fmt) for r in rs)  # noqa: E731
        print(f"{NAMES[mode]:<54} {rs[0]['rows']} images/epoch; warm: {', '.join(f'{x:.1f}' for x in rates)} "
              f"images/s (median {rate[mode]:.1f}), {eff[mode]:.1f} images per CPU-second, first batch after "
              f"{seq('first_batch_s', '.2f')} s; start-up (process start to end of cold epoch): "
              f"{seq('startup_s', '.1f')} s")
    print(f"throughput ratio Ray / reference pipeline: {rate['ray'] / rate['ref']:.2f} (target >= 1.0)")
    print(f"throughput ratio Ray / control (identical per-image work, pipeline overhead only): "
          f"{rate['ray'] / rate['dl']:.2f}; CPU efficiency ratio Ray / control {eff['ray'] / eff['dl']:.2f}")


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
    p.add_argument("--copies", type=int, default=10, help="the memory test streams x1 and x<copies> rows")
    p.add_argument("--tput-copies", type=int, default=4, help="the throughput test streams x<tput-copies> rows")
    p.add_argument("--repeats", type=int, default=2, help="throughput rounds per pipeline")
    p.add_argument("--base", default=None)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-data-", dir="/tmp"))
    try:
        from maskunet.tiny import ensure_tiny_base

        base = args.base or str(ensure_tiny_base(root / "base"))
        one = make_data(root, args.rows, args.image_size)
        many = link_copies(one, root / f"x{args.copies}", args.copies)
        stream = link_copies(one, root / "tput", args.tput_copies)
        print(f"data: {args.rows} rows (x1), {args.rows * args.copies} rows (x{args.copies}), 4 shards per x1, "
              f"source images {args.image_size}-{int(args.image_size * 1.5)} px (half JPEG, half PNG), "
              f"output {RESOLUTION}^2, batch {BATCH}, cpus={args.cpus}, load avg {os.getloadavg()[0]:.1f}")
        throughput(stream, base, args.cpus, root, args.repeats)
        if not args.skip_memory:
            memory(one, many, base, args.cpus, root, args.copies)
        print(f"load avg at end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
