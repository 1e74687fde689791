"""GPU figures, on a machine with CUDA but without the cluster services (no Ray, no MLflow).

    python scripts/bench_gpu.py serve [--steps 20] [--rounds 8] [--batch 8]
    python scripts/bench_gpu.py profile [--repeats 10]
    python scripts/bench_gpu.py pretrain --out DIR [--vae-steps N] [--unet-steps N] [--batch 128]

serve: the SD1.5 architecture (random weights, built offline) at 512 px through the serving
    replica's own engine (`load_pipeline` + `run_group`, what a Serve replica calls per
    batch), without HTTP: masked vs plain latency per image (same prompts and seeds,
    alternating) and one call for 8 requests vs 8 calls of one, batch-invariant and not.
pretrain: the pretraining stages of `maskunet pretrain-base` (`train_base`, the code the Ray
    task runs) with their throughput, then the shapes benchmark of the result.
"""
import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a large red circle in the center on a blue background", "a small green square at the top left",
           "a yellow ring at the bottom right on a black background", "a large white cross in the center"]


def request(index: int, steps: int, masks: bool):
    from maskunet_platform.serve.requests import GenerateRequest

    return GenerateRequest(prompt=PROMPTS[index % 4], negative_prompt="", num_inference_steps=steps,
                           guidance_scale=7.5, seed=index, width=512, height=512, num_images=1, masks=masks)


def timed(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def sd15_folders(work: Path) -> tuple[str, str]:
    from maskunet import MaskGenerator, MaskUNetPipeline
    from maskunet.sd15 import save_sd15_random_base

    started = time.perf_counter()
    save_sd15_random_base(work / "sd15")
    torch.manual_seed(0)
    MaskGenerator.from_unet(MaskUNetPipeline.from_base(str(work / "sd15")).unet).save_pretrained(work / "masks")
    print(f"built the SD1.5-architecture base and a random mask generator in {time.perf_counter() - started:.0f} s",
          flush=True)
    return str(work / "sd15"), str(work / "masks")


def _serve_variant(model, args) -> dict:
    """Masked vs plain per image, alone (alternating, same prompts and seeds) and in a batch of
    `args.batch` requests; the batch vs the same requests one call each."""
    from maskunet_platform.serve.engine import run_group

    for i in range(2):  # warm-up: cuDNN / cuBLAS pick their kernels per shape
        for on in (True, False):
            run_group(model, [request(i, args.steps, on)])
            run_group(model, [request(j, args.steps, on) for j in range(args.batch)])
    times = {True: [], False: []}
    for index in range(args.rounds):
        for on in (True, False) if index % 2 == 0 else (False, True):
            times[on].append(timed(lambda: run_group(model, [request(index, args.steps, on)])))
    masked, plain = statistics.median(times[True]), statistics.median(times[False])
    batched = {on: timed(lambda: run_group(model, [request(i, args.steps, on) for i in range(args.batch)])) / args.batch
               for on in (True, False)}
    apart = timed(lambda: [run_group(model, [request(i, args.steps, True)]) for i in range(args.batch)]) / args.batch
    return {"masked_s": round(masked, 4), "plain_s": round(plain, 4), "ratio": round(masked / plain, 3),
            "batch_masked_s_per_image": round(batched[True], 4), "batch_plain_s_per_image": round(batched[False], 4),
            "batch_ratio": round(batched[True] / batched[False], 3), "one_by_one_s_per_image": round(apart, 4),
            "batching_speedup": round(apart / batched[True], 2)}


def bench_serve(args) -> dict:
    from maskunet_platform.serve.engine import LoadOptions, load_pipeline

    base, masks = sd15_folders(Path(tempfile.mkdtemp(prefix="bench-gpu-")))
    report = {}
    for precision, invariant in (("fp16", False), ("fp16", True), ("fp32", False)):
        label = f"{precision}, {'batch-invariant' if invariant else 'not invariant'}"
        model = load_pipeline(base, masks, options=LoadOptions(batch_invariant=invariant, precision=precision))
        report[label] = row = _serve_variant(model, args)
        print(f"{label}: {json.dumps(row)}", flush=True)
        del model
        torch.cuda.empty_cache()
    print(f"SD1.5 architecture, 512 px, {args.steps} steps of the base's scheduler, guidance 7.5, "
          f"batch {args.batch}; {torch.cuda.get_device_name()}")
    return report


def _unet_call(model, batch: int, dtype, train: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 64, 64, generator=g).cuda().requires_grad_(train)  # plain: input grad only
    t = torch.randint(0, 1000, (batch,), generator=g).cuda()
    text = torch.randn(batch, 77, 768, generator=g).cuda()

    def call():
        with torch.autocast("cuda", dtype, enabled=dtype != torch.float32), torch.set_grad_enabled(train):
            out = model(x, t, text).sample
            if train:
                out.float().pow(2).mean().backward()
    return call


def bench_profile(args) -> dict:
    """SD1.5 U-Net at 512 px: plain vs masked, inference (batch 2, as CFG) and a training
    step (batch 4, bf16 autocast; plain back-propagates to its input), GPU and host time per call."""
    from diffusers import UNet2DConditionModel

    from maskunet import MaskConfig, MaskedUNet, MaskGenerator
    from maskunet.sd15 import SD15_UNET_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG).cuda().requires_grad_(False)
    masked = MaskedUNet(unet, MaskGenerator.from_unet(unet, MaskConfig()).cuda())
    if args.compile:  # inductor, default mode; every variant below compiles at its warm-up calls
        from maskunet.compile import compile_module

        compile_module(unet, mode=args.compile_mode)
    report = {}
    for label, batch, dtype, train in (("infer fp32", 2, torch.float32, False), ("infer bf16", 2, torch.bfloat16, False),
                                       ("train bf16", 4, torch.bfloat16, True)):
        row = {}
        for name in ("plain", "masked", "masked, layer path"):  # the layer path: the per-layer reference
            masked.masks_enabled = name != "plain"
            masked.mask_path = "layer" if "layer" in name else "block"
            masked.generator.train(train)
            call = _unet_call(masked, batch, dtype, train)
            for _ in range(3):
                call()
            gpu = [timed(call) for _ in range(args.repeats)]
            torch.cuda.synchronize()
            started = time.perf_counter()
            call()  # host time: how long Python takes to enqueue one call
            host = time.perf_counter() - started
            torch.cuda.synchronize()
            row[name] = {"ms": round(statistics.median(gpu) * 1000, 2), "host_ms": round(host * 1000, 2)}
        row["ratio"] = round(row["masked"]["ms"] / row["plain"]["ms"], 3)
        row["ratio, layer path"] = round(row["masked, layer path"]["ms"] / row["plain"]["ms"], 3)
        report[label] = row
        print(f"{label}: {json.dumps(row)}", flush=True)
    return report


def bench_pretrain(args) -> dict:
    from maskunet_platform.pretrain.runner import PretrainSettings, train_base

    settings = PretrainSettings(vae_steps=args.vae_steps, unet_steps=args.unet_steps, unet_batch_size=args.batch,
                                vae_batch_size=args.vae_batch, unet_lr=args.lr, seed=args.seed)
    curves, marks = {"vae": [], "unet": []}, {}

    def log(stage: str, metrics: dict, step: int) -> None:
        now = time.perf_counter()
        marks.setdefault(stage, now)
        curves[stage].append({"step": step, "s": round(now - marks[stage], 2),
                              **{k: round(v, 5) for k, v in metrics.items()}})
        if step % 500 == 0 or step in (settings.vae_steps if stage == "vae" else settings.unet_steps, 100):
            print(f"{stage} step {step}: {json.dumps(curves[stage][-1])}", flush=True)

    started = time.perf_counter()
    vae_files = None
    if args.vae:
        from maskunet_platform.pretrain.runner import vae_folder_files

        vae_files = vae_folder_files(Path(args.vae))
        settings = dataclasses.replace(settings, vae_steps=0)
    files = train_base(settings, log, vae_files=vae_files)
    wall = time.perf_counter() - started
    out = Path(args.out)
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    rates = {stage: _steps_per_s(points) for stage, points in curves.items() if points}
    print(f"pretraining: {wall:.0f} s in all; steps/s {rates}; {sum(map(len, files.values())) / 2**20:.1f} MiB "
          f"written to {out}", flush=True)
    return {"wall_s": round(wall, 1), "steps_per_s": rates, "settings": vars(settings), "curves": curves}


def _steps_per_s(points: list[dict]) -> float:
    first, last = points[0], points[-1]
    return round((last["step"] - first["step"]) / max(1e-9, last["s"] - first["s"]), 2)


def main() -> None:
    sys.path.insert(0, str(REPO))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--steps", type=int, default=20)
    serve.add_argument("--rounds", type=int, default=8)
    serve.add_argument("--batch", type=int, default=8)
    profile = sub.add_parser("profile")
    profile.add_argument("--repeats", type=int, default=10)
    profile.add_argument("--compile", action="store_true", help="torch.compile the U-Net (inductor)")
    profile.add_argument("--compile-mode", default=None, help="e.g. reduce-overhead (CUDA graphs)")
    pretrain = sub.add_parser("pretrain")
    pretrain.add_argument("--out", required=True)
    pretrain.add_argument("--vae-steps", type=int, default=2000)
    pretrain.add_argument("--unet-steps", type=int, default=2000)
    pretrain.add_argument("--batch", type=int, default=32, help="U-Net batch")
    pretrain.add_argument("--vae-batch", type=int, default=16)
    pretrain.add_argument("--lr", type=float, default=3e-4, help="U-Net learning rate")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--vae", default=None, help="reuse this pipeline folder's trained VAE")
    for p in (serve, profile, pretrain):
        p.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    report = {"serve": bench_serve, "profile": bench_profile, "pretrain": bench_pretrain}[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
