#!/usr/bin/env python
"""Training throughput benchmarks.

CPU (default): the embedded default job on 2 CPU workers (gloo), DeepSpeed ZeRO-2 vs plain
DDP, same data/steps; prints steady-state step time (last logging window), images/s and the
ZeRO-2 / DDP step-time ratio (target <= 1.15).

    python scripts/bench_train.py [--steps 30] [--window 10]

GPU (--gpu): one process, the SD1.5 U-Net architecture (random weights), bf16, DeepSpeed
ZeRO-2, 512x512 images (64x64 latents), batch 4; prints images/s of the MaskUNet training
step and the masked/plain step-time ratio, where "plain" trains the same decoder attention
projections directly (no generator, no masks).

    python scripts/bench_train.py --gpu [--batch 4] [--iters 20]
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench_cpu(args) -> dict:
    import ray

    from maskunet_platform.config import load_job
    from maskunet_platform.data.sample import write_sample
    from maskunet_platform.train.launcher import connect_ray, train_job

    root = Path(args.work_dir).expanduser()
    data = root / "data"
    if not data.exists():
        write_sample(str(data), rows=320, shards=4, seed=0)
    common = [f"data.source={data}", f"train.steps={args.steps}", f"train.log_every={args.window}",
              f"train.checkpoint_every={args.steps}", "tracking.enabled=false", "train.cpus_per_worker=0.5",
              f"train.storage_path={root / 'runs'}", f"train.export_dir={root / 'exports'}",
              "train.deepspeed.gradient_clipping=0", "data.deterministic=true"]
    results = {}
    runs = (("ddp", ["train.deepspeed.enabled=false"]), ("zero2", ["train.deepspeed.zero_stage=2", *args.zero_set]))
    for label, extra in runs:
        job = load_job(REPO / "jobs" / "local.yaml", [*common, *extra, f"name=bench-{label}-{time.time_ns()}"])
        connect_ray(None, job)
        outcome = train_job(job, finalize=False)
        m = outcome.metrics
        results[label] = {"step_time_s": m["train/step_time_s"], "images_per_s": m["train/images_per_s"],
                          "fit_s": outcome.timings["fit"]}
        print(f"{label:6s} step {m['train/step_time_s']:.3f} s  {m['train/images_per_s']:.1f} images/s "
              f"(last {args.window} steps, 2 workers x batch {job.data.batch_size}); fit {outcome.timings['fit']:.0f} s",
              flush=True)
    ratio = results["zero2"]["step_time_s"] / results["ddp"]["step_time_s"]
    print(f"ZeRO-2 / DDP step-time ratio: {ratio:.3f} (target <= 1.15)")
    ray.shutdown()
    return {**results, "zero2_over_ddp": ratio}


def _gpu_models(args):
    import torch
    from diffusers import UNet2DConditionModel

    from maskunet import MaskConfig, MaskedUNet, MaskGenerator
    from maskunet.sd15 import SD15_UNET_CONFIG
    from maskunet.tiny import TINY_UNET

    config = TINY_UNET if args.tiny else SD15_UNET_CONFIG
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    masked = MaskedUNet(unet, MaskGenerator.from_unet(unet, MaskConfig()))
    return unet, masked, config


def _time_engine(engine, inputs, loss_fn, iters: int, warmup: int, sync) -> list[float]:
    times = []
    for i in range(warmup + iters):
        started = time.perf_counter()
        loss = loss_fn(engine, inputs)
        engine.backward(loss)
        engine.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def bench_gpu(args) -> dict:
    import deepspeed
    import torch
    import torch.distributed as dist

    device = torch.device(args.device)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29512")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16
    unet, masked, config = _gpu_models(args)
    latent = config["sample_size"] if args.tiny else 64  # 512 px / 8
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(args.batch, 4, latent, latent, generator=g).to(device, dtype),
              torch.randint(0, 1000, (args.batch,), generator=g).to(device),
              torch.randn(args.batch, 77, config["cross_attention_dim"], generator=g).to(device, dtype))

    def loss_fn(engine, x):
        return engine(*x).sample.float().pow(2).mean()

    ds_config = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1,
                 "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
                 "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
                 "steps_per_print": 10**9}
    results = {}
    for label in ("masked", "plain"):
        if label == "plain":
            masked.unwrap()
            model = unet
            for name, module in model.named_modules():  # the same decoder projections, trained directly
                if name.startswith("up_blocks.") and ".attn" in name and name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
                    module.weight.requires_grad_(True)
        else:
            model = masked
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2, fused=device.type == "cuda")
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer,
                                          config=ds_config, dist_init_required=False)
        times = _time_engine(engine, inputs, loss_fn, args.iters, args.warmup, sync)
        step = statistics.median(times)
        results[label] = {"step_time_s": step, "images_per_s": args.batch / step,
                          "trainable_params": sum(p.numel() for p in params)}
        print(f"{label:6s} step {step * 1000:.1f} ms  {args.batch / step:.2f} images/s "
              f"({results[label]['trainable_params'] / 1e6:.2f}M trainable)", flush=True)
        del engine, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ratio = results["masked"]["step_time_s"] / results["plain"]["step_time_s"]
    print(f"masked / plain step-time ratio: {ratio:.3f}")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return {**results, "masked_over_plain": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="SD1.5 U-Net bf16 ZeRO-2 single-GPU benchmark")
    parser.add_argument("--steps", type=int, default=30, help="CPU: optimizer steps per run")
    parser.add_argument("--window", type=int, default=10, help="CPU: steps in the timed (last) window")
    parser.add_argument("--work-dir", default="~/.cache/maskunet/bench")
    parser.add_argument("--batch", type=int, default=4, help="GPU: images per step")
    parser.add_argument("--iters", type=int, default=20, help="GPU: timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="GPU: untimed iterations")
    parser.add_argument("--device", default="cuda", help="GPU mode device (cpu with --tiny for a smoke run)")
    parser.add_argument("--tiny", action="store_true", help="GPU mode with the tiny U-Net (smoke test)")
    parser.add_argument("--zero-set", action="append", default=[], metavar="KEY=VALUE",
                        help="CPU: extra config override for the ZeRO-2 run (e.g. train.deepspeed.extra=...)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.gpu and args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not args.gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/maskunet/torch_extensions"))
    figures = bench_gpu(args) if args.gpu else bench_cpu(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
