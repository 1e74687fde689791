"""Training checkpoints inside Ray Train checkpoints, resume, and export of the mask generator.

Layout of one checkpoint directory (every rank writes its own files; Ray Train merges them):

    train_state.json        step, world size, engine kind, method, fp16 loss scale (rank 0)
    generator/              the consolidated fp32 trained weights in the method's export format
                            (rank 0): a MaskGenerator folder (masks), a diffusers LoRA file (lora)
                            or a diffusers U-Net folder (full), see train/methods
    deepspeed/<tag>/...     each rank's DeepSpeed ZeRO shard (all ranks), or
    ddp/optimizer.pt        optimizer + lr-scheduler state (rank 0, plain tensors only)
    rng/rank<r>.safetensors each rank's random-stream state (see rng.py)

A resuming rank downloads only what it reads (`download_for_rank`), not every rank's shards.

Nothing is unpickled from storage: the generator loads from safetensors, and torch state
files load with `weights_only=True` (DeepSpeed's own loader is switched to it, see below).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Optional

import pyarrow.fs as pafs
import torch

if TYPE_CHECKING:  # diffusers' import costs seconds; Ray Train's controller imports this module
    from maskunet import MaskGenerator
from maskunet_platform.train.engine import Engine
from maskunet_platform.train.rng import RNG_DIR, rng_file, save_rng_state

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
GENERATOR_DIR = "generator"


@dataclass
class TrainState:
    step: int = 0
    world_size: int = 1
    engine: str = "deepspeed"
    loss_scale: Optional[float] = None  # fp16: the dynamic loss scale and its growth counter
    loss_scale_good_steps: int = 0
    method: str = "masks"


def as_trainee(trained):
    """A Trainee, or a bare MaskGenerator wrapped as the masks method's trainee."""
    from maskunet_platform.train.methods import Trainee

    return trained if isinstance(trained, Trainee) else Trainee("masks", trained, trained)


def full_generator_state(engine: Engine, trained) -> dict[str, torch.Tensor]:
    """fp32 trained weights (a MaskGenerator's, or a Trainee's trained parameters) gathered
    from the ZeRO partitions. Collective: all ranks call it."""
    state = {}
    if engine.ds_engine is not None:
        from deepspeed.utils import safe_get_full_fp32_param

    for name, param in as_trainee(trained).trained_parameters():
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


def save_training_checkpoint(engine: Engine, trained, step: int, rank: int,
                             world_size: int, out_dir: str | Path, rng: Optional[torch.Generator] = None) -> None:
    """Every rank writes its part of the step-`step` checkpoint into its local `out_dir`
    (`trained`: a Trainee or a MaskGenerator; with `rng`, the worker's generator: the state of
    this rank's random streams)."""
    out_dir = Path(out_dir)
    trainee = as_trainee(trained)
    if rng is not None:
        save_rng_state(rng, rank, out_dir)
    state = full_generator_state(engine, trainee)
    if engine.ds_engine is not None:
        engine.ds_engine.save_checkpoint(str(out_dir / "deepspeed"), tag=_tag(step),
                                         exclude_frozen_parameters=True)
    elif rank == 0:
        (out_dir / "ddp").mkdir(parents=True, exist_ok=True)
        torch.save({"optimizer": engine.optimizer.state_dict(), "lr_scheduler": engine.lr_scheduler.state_dict()},
                   out_dir / "ddp" / "optimizer.pt")
    if rank == 0:
        trainee.export(state, out_dir / GENERATOR_DIR)
        train_state = TrainState(step=step, world_size=world_size, engine=engine.kind, method=trainee.method)
        if engine.loss_scale is not None:
            train_state.loss_scale = engine.loss_scale.scale
            train_state.loss_scale_good_steps = engine.loss_scale.good_steps
        (out_dir / STATE_FILE).write_text(json.dumps(train_state.__dict__))


def read_train_state(ckpt_dir: str | Path) -> TrainState:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{ckpt_dir} is not a maskunet training checkpoint (no {STATE_FILE})")
    return TrainState(**json.loads(path.read_text()))


# DeepSpeed files that belong to one data-parallel rank: ZeRO optimizer shards, and under
# ZeRO-3 the per-rank model-state files. Everything else in the tag folder (e.g. ZeRO-1/2's
# mp_rank_00_model_states.pt) is read by every rank.
_RANK_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_")


def download_for_rank(fs: pafs.FileSystem, ckpt_path: str, local_dir: str | Path, rank: int,
                      world_size: int, engine_kind: str) -> Path:
    """Copy from a checkpoint on storage only the files `rank` reads to resume.

    DeepSpeed 0.19's load_checkpoint (elastic_checkpoint off, the default) reads the shared
    model-state file and only this rank's optimizer shard (`_get_all_zero_checkpoint_state_dicts`),
    so the other ranks' shards stay on storage. The generator folder is needed only when the
    optimizer state cannot be used (another engine or world size) or for plain DDP.
    """
    local_dir = Path(local_dir)
    _copy(fs, f"{ckpt_path}/{STATE_FILE}", local_dir / STATE_FILE)
    state = read_train_state(local_dir)
    names = [RNG_DIR + "/" + rng_file("", rank).name]
    if state.engine != engine_kind or state.world_size != world_size or state.engine == "ddp":
        names.append(GENERATOR_DIR)
    if state.engine == engine_kind == "ddp" and state.world_size == world_size:
        names.append("ddp/optimizer.pt")
    for name in names:
        if fs.get_file_info(f"{ckpt_path}/{name}").type != pafs.FileType.NotFound:
            _copy(fs, f"{ckpt_path}/{name}", local_dir / name)
    if state.engine == engine_kind == "deepspeed" and state.world_size == world_size:
        for info in fs.get_file_info(pafs.FileSelector(f"{ckpt_path}/deepspeed", recursive=True)):
            owner = _RANK_FILE.match(info.base_name)
            if info.is_file and (owner is None or int(owner.group(1)) == rank):
                _copy(fs, info.path, local_dir / PurePosixPath(info.path).relative_to(ckpt_path))
    return local_dir


def download_generator(checkpoint, out_dir: str | Path) -> Path:
    """Copy only the consolidated generator folder of a `ray.train.Checkpoint` (local or on
    S3) to `out_dir`, not the DeepSpeed shards next to it."""
    fs, path = checkpoint.filesystem, checkpoint.path
    if fs.get_file_info(f"{path}/{GENERATOR_DIR}").type != pafs.FileType.Directory:
        raise FileNotFoundError(f"checkpoint {path} has no {GENERATOR_DIR}/ folder")
    _copy(fs, f"{path}/{GENERATOR_DIR}", Path(out_dir))
    return Path(out_dir)


def _copy(fs: pafs.FileSystem, src: str, dst: Path) -> None:
    """A file or (recursively) a folder from `fs` to the local path `dst`."""
    if fs.get_file_info(src).type == pafs.FileType.Directory:
        for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
            if info.is_file:
                _copy(fs, info.path, dst / PurePosixPath(info.path).relative_to(src))
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src, str(dst), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def restore_training_checkpoint(engine: Engine, trained, ckpt_dir: str | Path,
                                world_size: int) -> int:
    """Load a checkpoint into the engine (`trained`: a Trainee or a MaskGenerator); returns the
    step to continue from."""
    ckpt_dir = Path(ckpt_dir)
    trainee = as_trainee(trained)
    state = read_train_state(ckpt_dir)
    if state.method != trainee.method:
        raise ValueError(f"checkpoint {ckpt_dir} trained method {state.method!r}, this run {trainee.method!r}")
    if state.engine != engine.kind or state.world_size != world_size:
        # Optimizer shards only fit the same engine and world size: keep the weights, restart Adam.
        log.warning("checkpoint from %s x%d, now %s x%d: restoring generator weights only",
                    state.engine, state.world_size, engine.kind, world_size)
        trainee.load_weights(ckpt_dir / GENERATOR_DIR)
        return state.step
    if engine.ds_engine is not None:
        with _torch_load_weights_only():
            path, _ = engine.ds_engine.load_checkpoint(str(ckpt_dir / "deepspeed"), tag=_tag(state.step),
                                                       load_module_strict=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {ckpt_dir / 'deepspeed'}")
        if engine.loss_scale is not None and state.loss_scale is not None:
            engine.loss_scale.scale, engine.loss_scale.good_steps = state.loss_scale, state.loss_scale_good_steps
            engine.apply_loss_scale()
    else:
        trainee.load_weights(ckpt_dir / GENERATOR_DIR)
        saved = torch.load(ckpt_dir / "ddp" / "optimizer.pt", map_location="cpu", weights_only=True)
        engine.optimizer.load_state_dict(saved["optimizer"])
        engine.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    return state.step


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
