"""Training checkpoints inside Ray Train checkpoints, resume, and export of the mask generator.

Layout of one checkpoint directory (every rank writes its own files; Ray Train merges them):

    train_state.json        step, world size, engine kind (rank 0)
    generator/              consolidated fp32 MaskGenerator folder, config + safetensors (rank 0)
    deepspeed/<tag>/...     each rank's DeepSpeed ZeRO shard (all ranks), or
    ddp/optimizer.pt        optimizer + lr-scheduler state (rank 0, plain tensors only)

Nothing is unpickled from storage: the generator loads from safetensors, and torch state
files load with `weights_only=True` (DeepSpeed's own loader is switched to it, see below).
"""
import copy
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from maskunet import MaskGenerator
from maskunet_platform.train.engine import Engine

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
GENERATOR_DIR = "generator"


@dataclass
class TrainState:
    step: int = 0
    world_size: int = 1
    engine: str = "deepspeed"


def full_generator_state(engine: Engine, generator: nn.Module) -> dict[str, torch.Tensor]:
    """fp32 generator weights gathered from the ZeRO partitions. Collective: all ranks call it."""
    state = {}
    if engine.ds_engine is not None:
        from deepspeed.utils import safe_get_full_fp32_param

    for name, param in generator.named_parameters():
        full = safe_get_full_fp32_param(param) if engine.ds_engine is not None else None
        state[name] = (full if full is not None else param.detach()).float().cpu().clone()
    return state


def export_generator(generator: MaskGenerator, state: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """Write a MaskGenerator folder (config + safetensors) holding `state`."""
    out_dir = Path(out_dir)
    exported = copy.deepcopy(generator).to("cpu", torch.float32)
    exported.load_state_dict(state, strict=True)
    exported.save_pretrained(str(out_dir))
    return out_dir


def save_training_checkpoint(engine: Engine, generator: MaskGenerator, step: int, rank: int,
                             world_size: int, out_dir: str | Path) -> None:
    """Every rank writes its part of the step-`step` checkpoint into its local `out_dir`."""
    out_dir = Path(out_dir)
    state = full_generator_state(engine, generator)
    if engine.ds_engine is not None:
        engine.ds_engine.save_checkpoint(str(out_dir / "deepspeed"), tag=_tag(step),
                                         exclude_frozen_parameters=True)
    elif rank == 0:
        (out_dir / "ddp").mkdir(parents=True, exist_ok=True)
        torch.save({"optimizer": engine.optimizer.state_dict(), "lr_scheduler": engine.lr_scheduler.state_dict()},
                   out_dir / "ddp" / "optimizer.pt")
    if rank == 0:
        export_generator(generator, state, out_dir / GENERATOR_DIR)
        train_state = TrainState(step=step, world_size=world_size, engine=engine.kind)
        (out_dir / STATE_FILE).write_text(json.dumps(train_state.__dict__))


def read_train_state(ckpt_dir: str | Path) -> TrainState:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{ckpt_dir} is not a maskunet training checkpoint (no {STATE_FILE})")
    return TrainState(**json.loads(path.read_text()))


def restore_training_checkpoint(engine: Engine, generator: MaskGenerator, ckpt_dir: str | Path,
                                world_size: int) -> int:
    """Load a checkpoint into the engine; returns the step to continue from."""
    ckpt_dir = Path(ckpt_dir)
    state = read_train_state(ckpt_dir)
    if state.engine != engine.kind or state.world_size != world_size:
        # Optimizer shards only fit the same engine and world size: keep the weights, restart Adam.
        log.warning("checkpoint from %s x%d, now %s x%d: restoring generator weights only",
                    state.engine, state.world_size, engine.kind, world_size)
        _load_generator_weights(generator, ckpt_dir / GENERATOR_DIR)
        return state.step
    if engine.ds_engine is not None:
        with _torch_load_weights_only():
            path, _ = engine.ds_engine.load_checkpoint(str(ckpt_dir / "deepspeed"), tag=_tag(state.step),
                                                       load_module_strict=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {ckpt_dir / 'deepspeed'}")
    else:
        _load_generator_weights(generator, ckpt_dir / GENERATOR_DIR)
        saved = torch.load(ckpt_dir / "ddp" / "optimizer.pt", map_location="cpu", weights_only=True)
        engine.optimizer.load_state_dict(saved["optimizer"])
        engine.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    return state.step


def _load_generator_weights(generator: MaskGenerator, folder: Path) -> None:
    loaded = dict(MaskGenerator.from_pretrained(str(folder)).named_parameters())
    with torch.no_grad():
        for name, param in generator.named_parameters():
            param.copy_(loaded[name].to(param.dtype))


def _tag(step: int) -> str:
    return f"step{step:08d}"


@contextmanager
def _torch_load_weights_only():
    """Force `torch.load(weights_only=True)` while DeepSpeed reads its shard files.

    DeepSpeed asks for full unpickling; its files only hold tensors, containers and a few
    DeepSpeed/torch types, which are allow-listed instead of trusting arbitrary pickles.
    """
    original = torch.load

    def load_weights_only(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load_weights_only
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            yield
    finally:
        torch.load = original


def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler, DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, set, os.PathLike]
