"""`maskunet serve` under load, on one machine: real HTTP to a local Ray Serve.

    .venv/bin/python scripts/bench_serve.py [--base DIR] [--masks DIR] [--clients 16] [--requests 96]
                                             [--steps 20] [--batch 8] [--size 64]

1. Throughput at N concurrent clients (each sends its requests back to back): dynamic
   batching (max_batch_size --batch, batch-invariant and not) vs no batching (max_batch_size 1),
   with p50 / p99 latency per request.
2. Masked vs plain latency per image on the same service: single requests one after another,
   alternating masks on / off with the same prompts and seeds (p50 of each, and the ratio).
Defaults: the pretrained tiny shapes base (64 px) with a random mask generator (the "attn"
layers; the cost of masking does not depend on what the masks keep), CPU.
"""
import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request

PROMPTS = ["a large red circle in the center on a blue background", "a small green square at the top left",
           "a yellow ring at the bottom right on a black background", "a large white cross in the center"]


def post(url: str, payload: dict) -> tuple[int, dict, float]:
    started = time.perf_counter()
    request = urllib.request.Request(url + "/v1/generate", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read()), time.perf_counter() - started
    except urllib.error.HTTPError as e:
        return e.code, {}, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_test(url: str, clients: int, total: int, steps: int, size: int) -> dict:
    """`clients` threads share `total` requests; throughput over the whole run."""
    results, lock, counter = [], threading.Lock(), iter(range(total))

    def client() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            payload = {"prompt": PROMPTS[index % 4], "seed": index, "num_inference_steps": steps,
                       "width": size, "height": size}
            status, body, seconds = post(url, payload)
            with lock:
                results.append((status, body.get("batch_size", 0), seconds))

    warm_up = [threading.Thread(target=post, args=(url, {"prompt": PROMPTS[i % 4], "num_inference_steps": steps,
                                                          "width": size, "height": size}), daemon=True)
               for i in range(clients)]  # every batch shape once (oneDNN builds kernels per shape)
    for threads in (warm_up, [threading.Thread(target=client, daemon=True) for _ in range(clients)]):
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - started
    ok = [r for r in results if r[0] == 200]
    latencies = [r[2] for r in ok]
    return {"requests": total, "ok": len(ok), "wall_s": round(wall, 2), "req_per_s": round(len(ok) / wall, 3),
            "p50_s": round(percentile(latencies, 0.5), 3), "p99_s": round(percentile(latencies, 0.99), 3),
            "mean_batch": round(statistics.mean(r[1] for r in ok), 2)}


def masked_vs_plain(url: str, rounds: int, steps: int, size: int) -> dict:
    times = {True: [], False: []}
    for index in range(rounds):
        for masks in (True, False) if index % 2 == 0 else (False, True):
            payload = {"prompt": PROMPTS[index % 4], "seed": index, "num_inference_steps": steps, "masks": masks,
                       "width": size, "height": size}
            status, body, _ = post(url, payload)
            assert status == 200, body
            times[masks].append(body["timings"]["pipeline_s"])
    masked, plain = statistics.median(times[True]), statistics.median(times[False])
    return {"masked_p50_s": round(masked, 4), "plain_p50_s": round(plain, 4), "ratio": round(masked / plain, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="default: the pretrained shapes base, installed to a temp dir")
    parser.add_argument("--masks", default=None, help="default: a random 'attn' mask generator for the base")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12, help="masked vs plain: requests of each")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in the replica")
    parser.add_argument("--latency-only", action="store_true", help="only masked vs plain, on the batching service")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-serve-")
    base, masks = args.base or _shapes_base(work), args.masks or _random_masks(args.base or f"{work}/base", work)

    import ray
    from ray import serve

    from maskunet_platform.config.serve import ServeSection
    from maskunet_platform.serve.app import run_app, start_serve, wait_healthy
    from maskunet_platform.serve.engine import ModelSource

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="r-", dir="/tmp"))
    start_serve("127.0.0.1", 8765)
    source = ModelSource(base=base, masks=masks)
    limits = {"max_steps": max(50, args.steps), "max_size": max(768, args.size)}
    # The baseline is the fastest unbatched service: with one request per call there is
    # nothing to keep invariant, so its layers run batched (CFG's two halves together).
    variants = {"no batching": {"max_batch_size": 1, "batch_invariant": False},
                f"batching (max {args.batch}, batch-invariant)": {"max_batch_size": args.batch},
                f"batching (max {args.batch}, not invariant)": {"max_batch_size": args.batch,
                                                                "batch_invariant": False}}
    if args.latency_only:
        variants = {label: v for label, v in variants.items() if label.endswith("batch-invariant)")}
    report = {}
    for label, batching in variants.items():
        settings = ServeSection(app_name="bench", cpus_per_replica=0, torch_threads=args.threads,
                                max_queued_requests=1000, limits=limits,
                                batching={"batch_wait_timeout_s": 0.05, **batching})
        run_app(settings, source)
        wait_healthy("http://127.0.0.1:8765", 300)
        if not args.latency_only:
            report[label] = load_test("http://127.0.0.1:8765", args.clients, args.requests, args.steps, args.size)
        if label.startswith("batching"):
            report[f"masked vs plain, {label}"] = masked_vs_plain("http://127.0.0.1:8765", args.rounds, args.steps,
                                                                   args.size)
        serve.delete("bench")
        print(f"{label}: {report.get(label)} (load average {os.getloadavg()[0]:.1f})", flush=True)
    serve.shutdown()
    ray.shutdown()
    _print(report, args)


def _print(report: dict, args) -> None:
    print(f"\n{args.clients} concurrent clients, {args.requests} requests, {args.steps} steps, {args.size}px, "
          f"{args.threads} torch threads, CPU; load average at the end {os.getloadavg()[0]:.1f} "
          f"(other jobs on the machine skew the figures)")
    base = report.get("no batching", {}).get("req_per_s", 1.0)
    for label, row in report.items():
        if "req_per_s" in row:
            print(f"  {label:<42} {row['req_per_s']:.3f} req/s ({row['req_per_s'] / base:.2f}x)  "
                  f"p50 {row['p50_s']:.2f} s  p99 {row['p99_s']:.2f} s  mean batch {row['mean_batch']}")
        else:
            print(f"  {label}: masked {row['masked_p50_s']:.3f} s, plain {row['plain_p50_s']:.3f} s per image "
                  f"(p50 pipeline time) -> {row['ratio']:.3f}x")
    print(json.dumps(report))


def _shapes_base(work: str) -> str:
    from maskunet.tiny import install_shapes_base

    return str(install_shapes_base(f"{work}/base"))


def _random_masks(base: str, work: str) -> str:
    import torch

    from maskunet import MaskGenerator, MaskUNetPipeline

    torch.manual_seed(0)
    MaskGenerator.from_unet(MaskUNetPipeline.from_base(base).unet).save_pretrained(f"{work}/masks")
    return f"{work}/masks"


if __name__ == "__main__":
    main()
