"""torch.compile for a (masked) U-Net, with a fallback to eager that is never silent.

`model.compile: auto | on | off`: `auto` compiles where CUDA is present (there the per-op
launch cost dominates a masked U-Net call; inductor fuses the mask chain's elementwise ops
into a few Triton kernels); on CPU it stays eager unless asked, since inductor's first call
costs one to three minutes on 2 cores. The mode is inductor's default: "reduce-overhead"
(CUDA graphs) reuses output buffers between replays, which a multistep scheduler that keeps
earlier predictions, or a trainer's hooks, must be measured against on a GPU first. The module is compiled in place (`nn.Module.compile`), so its state-dict
keys, hooks and attributes stay as they are for the trainer, checkpoints and exports.
"""
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_SETTINGS = ("auto", "on", "off")


def compile_wanted(setting: str, device: torch.device | str) -> bool:
    """Whether `model.compile` means compiling on this device."""
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"model.compile: {setting!r} is not one of {', '.join(COMPILE_SETTINGS)}")
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def compile_module(module: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile `module` in place; its first call that fails to compile warns once and runs
    eager from then on (the call itself is re-run eagerly, so its result is eager's)."""
    module.compile(backend=backend, mode=mode)
    compiled = module._compiled_call_impl  # what nn.Module.compile installs; replaced below

    def call_or_fall_back(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:  # compiler failures, not the model's own errors
            cause = getattr(error, "inner_exception", None) or error  # BackendCompilerFailed wraps it
            text = str(cause).strip().splitlines()
            log.warning("torch.compile failed for %s, running it eagerly from now on: %s: %s",
                        type(module).__name__, type(cause).__name__, (text[0] if text else "")[:300])
            module._compiled_call_impl = None
            return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = call_or_fall_back
    return module


def is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None
