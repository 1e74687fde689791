"""Optimisation engines for the mask generator: DeepSpeed ZeRO 0-3, or plain torch DDP.

Both expose the same small surface (`forward_module`, `backward`, `step`, `lr`) so the
training loop reads the same either way; DDP is the parity baseline for ZeRO.
"""
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from maskunet_platform.config.train import TrainSection


TORCH_EXTENSIONS_DIR = "~/.cache/maskunet/torch_extensions"


def configure_worker_env(use_gpu: bool) -> None:
    """Process env DeepSpeed reads at import, set inside each worker: accelerator and a
    persistent JIT-op cache. `~` is expanded here, on the worker: the driver's home
    directory may not exist on the cluster's nodes."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # DeepSpeed JIT-builds any op it loads (e.g. its CPU Adam, if a job's `deepspeed.extra`
    # asks for it) into this folder: keep the builds across runs and CI jobs.
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", TORCH_EXTENSIONS_DIR)
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.expanduser(extensions)


def lr_lambda(train: TrainSection) -> Callable[[int], float]:
    """Multiplier on the base lr: linear warmup, then constant / linear decay / cosine decay."""
    warmup, total = train.warmup_steps, train.steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if train.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if train.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(train: TrainSection, micro_batch: int, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for this job (clipping always explicit)."""
    ds = train.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": train.use_gpu}
    if ds.offload_param == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": train.use_gpu}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "train_batch_size": micro_batch * ds.gradient_accumulation_steps * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        # Never DeepSpeed's bf16/fp16 modes: they cast every parameter of the module, the mask
        # generator included. The frozen base is loaded in train.precision instead, the
        # generator stays fp32, and fp16's loss scale is applied through the ZeRO optimizer
        # (see DynamicLossScale).
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        # We pass a torch AdamW; DeepSpeed's own CPU Adam would JIT-compile for ~1 min.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(config, ds.extra)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_optimizer(params: list[nn.Parameter], train: TrainSection) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("no trainable parameters: the mask generator has no parameters requiring grad")
    return torch.optim.AdamW(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)


@dataclass
class DynamicLossScale:
    """Loss scale for fp16 training with an fp32 mask generator.

    The frozen U-Net runs in fp16, so the gradients flowing back through it to the masks
    underflow without scaling. DeepSpeed's own fp16 mode would scale, but it also casts the
    generator to fp16. Here the generator stays fp32 and the ZeRO optimizer is handed this
    scale as an external loss scale (`override_loss_scale`): `engine.backward` multiplies the
    loss by it, the optimizer divides the fp32 gradients by it (before clipping), and a step
    whose gradients are not finite is skipped (zeroed, no lr-scheduler step). The scale then
    halves after an overflow and doubles after `growth_interval` applied steps in a row.
    """

    scale: float = 2.0**16
    growth_interval: int = 1000
    min_scale: float = 1.0
    good_steps: int = 0

    def update(self, applied: bool) -> None:
        if not applied:
            self.scale, self.good_steps = max(self.scale / 2, self.min_scale), 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0


@dataclass
class Engine:
    """What the loop drives. `forward_module(sample, t, ehs)` runs the (wrapped) masked U-Net."""

    kind: str  # "deepspeed" | "ddp"
    forward_module: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    accumulation_steps: int
    clipping: float
    trainable: list[nn.Parameter]
    ds_engine: Any = None
    loss_scale: Optional[DynamicLossScale] = None  # fp16 only
    _micro: int = 0

    def backward(self, loss: torch.Tensor) -> None:
        if self.ds_engine is not None:
            self.ds_engine.backward(loss)  # scales by 1/accumulation (and the loss scale) itself
        else:
            (loss / self.accumulation_steps).backward()

    def step(self) -> bool:
        """Advance one micro-batch; True when an optimizer step was applied (at an accumulation
        boundary, and not skipped for non-finite gradients)."""
        if self.ds_engine is not None:
            boundary = self.ds_engine.is_gradient_accumulation_boundary()
            self.ds_engine.step()
            if not boundary:
                return False
            applied = self.ds_engine.was_step_applied()
            if self.loss_scale is not None:
                self.loss_scale.update(applied)
                self.apply_loss_scale()
            return applied
        self._micro += 1
        if self._micro % self.accumulation_steps:
            return False
        if self.clipping > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.clipping)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        return True

    def apply_loss_scale(self) -> None:
        if self.loss_scale is not None:
            self.ds_engine.optimizer.override_loss_scale(self.loss_scale.scale)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for non-finite gradients since the run began (restored on resume)."""
        return int(getattr(self.ds_engine, "skipped_steps", 0) or 0)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_engine(model: nn.Module, train: TrainSection, micro_batch: int, world_size: int,
                 device: torch.device) -> Engine:
    """Wrap `model` (masked U-Net; only mask-generator params require grad) for training.

    The module's parameters keep their dtypes: the frozen base in train.precision, the
    mask generator in fp32 (DeepSpeed's mixed-precision modes are never enabled)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train))
    ds = train.deepspeed
    if not ds.enabled:
        return _ddp_engine(model, train, world_size, device, trainable, optimizer, scheduler)
    import deepspeed  # imported late: it reads DS_ACCELERATOR at import time

    if not train.use_gpu:
        skip_cpu_shm_op(deepspeed)
    if "optimizer" not in ds.extra:  # ours is a torch AdamW, never DeepSpeed's Muon
        skip_muon_compile()
    ds_engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(train, micro_batch, world_size),
        dist_init_required=False,  # Ray Train already initialised the process group
    )
    engine = Engine("deepspeed", ds_engine, ds_optimizer, ds_scheduler, ds.gradient_accumulation_steps,
                    ds.gradient_clipping, trainable, ds_engine=ds_engine)
    if train.precision == "fp16":
        scaling = train.loss_scaling
        engine.loss_scale = DynamicLossScale(2.0**scaling.initial_scale_power, scaling.growth_interval,
                                             scaling.min_scale)
        engine.apply_loss_scale()
    return engine


def skip_cpu_shm_op(deepspeed) -> None:
    """Keep DeepSpeed's CPU comm backend from building and loading its shared-memory op.

    The op only serves `inference_all_reduce` (tensor-parallel inference); ZeRO training
    never calls it. Left alone, every worker first probes all of DeepSpeed's ops with
    compiler subprocesses, then JIT-builds the op (30-45 s, once per machine) or loads it.
    `__compatible_ops__` is the one table the comm backend consults (DeepSpeed 0.19)."""
    deepspeed.ops.__compatible_ops__ = {"deepspeed_shm_comm": False}


MUON_MODULES = ("deepspeed.runtime.zero.muon.muon_optimizer", "deepspeed.runtime.zero.muon.original_muon")


def skip_muon_compile() -> None:
    """Answer DeepSpeed's "is this optimizer Muon?" checks without importing its Muon modules.

    ZeRO's set-up and every optimizer step import `MuonWithAuxAdam` (for an isinstance check)
    and `muon_update`, whatever the optimizer; importing those modules runs `torch.compile` on
    their functions, which imports inductor: ~1.7 s of CPU per worker. With our AdamW the
    checks must answer False, and a class nothing is an instance of does; the Muon functions
    are never called, and fail loudly if they ever were (DeepSpeed 0.19)."""
    import sys
    import types

    class MuonWithAuxAdam(torch.optim.Optimizer):
        """Never instantiated."""

    def not_muon(*args, **kwargs):
        raise RuntimeError("DeepSpeed asked for its Muon optimizer, which this job does not use (engine.py)")

    for name in MUON_MODULES:
        if name not in sys.modules:
            stand_in = types.ModuleType(name, "maskunet's stand-in: the job's optimizer is a torch AdamW")
            stand_in.MuonWithAuxAdam, stand_in.muon_update, stand_in.adam_update = MuonWithAuxAdam, not_muon, not_muon
            sys.modules[name] = stand_in


def _ddp_engine(model, train, world_size, device, trainable, optimizer, scheduler) -> Engine:
    model.to(device)
    wrapped: nn.Module = model
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return Engine("ddp", wrapped, optimizer, scheduler, train.deepspeed.gradient_accumulation_steps,
                  train.deepspeed.gradient_clipping, trainable)
