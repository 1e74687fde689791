"""Which U-Net decoder weights are masked, and the layers that apply per-sample masks.

Masked layers are the U-Net's own `nn.Linear`/`nn.Conv2d` modules with their class
swapped in place (same parameters, same state-dict keys, still `isinstance` of the
original class). Each computes its output once, with `W * m_b` for sample b (see
masked_ops): nothing is registered per call and no unmasked duplicate runs.
"""
import re

import torch
from torch import nn

from maskunet.masked_ops import LayerMask, masked_forward

_ATTN_PROJ = r"up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn\d+\.(to_q|to_k|to_v|to_out\.0)"


def _is_attn_proj(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and re.fullmatch(_ATTN_PROJ, name) is not None


# Named selections (the paper's ablations); anything else is a comma-separated list of regexes.
SELECTIONS = {
    "attn": _is_attn_proj,
    "linear": lambda name, module: isinstance(module, nn.Linear),
    "attn+conv": lambda name, module: _is_attn_proj(name, module) or isinstance(module, nn.Conv2d),
}


def _matches(name: str, module: nn.Module, selection: str) -> bool:
    if selection in SELECTIONS:
        return SELECTIONS[selection](name, module)
    patterns = [p.strip() for p in selection.split(",") if p.strip()]
    return isinstance(module, (nn.Linear, nn.Conv2d)) and any(re.fullmatch(p, name) for p in patterns)


def select_layers(unet: nn.Module, selection: str = "attn") -> dict[int, list[tuple[str, nn.Module]]]:
    """Masked layers grouped by up-block index, in module order. Only decoder layers qualify."""
    groups: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in unet.named_modules():
        if not name.startswith("up_blocks.") or not _matches(name, module, selection):
            continue
        groups.setdefault(int(name.split(".")[1]), []).append((name, module))
    if not groups:
        raise ValueError(f"mask layer selection {selection!r} matches no layer in the U-Net decoder")
    return groups


def weight_matrix_shape(module: nn.Module) -> tuple[int, int]:
    """(out, fan_in) of the mask: linear weights entry by entry; convolutions per kernel.

    A conv mask keeps or drops a whole k x k kernel (out x in/groups entries, broadcast over
    the window): per-entry conv masks need adapters over in*k*k columns, which made the SD1.5
    `attn+conv` generator 296.5M parameters; per kernel it is 136.5M (the paper: 81.69M).
    """
    return module.weight.shape[0], module.weight.shape[1]


class MaskedLayerMixin:
    """Adds a per-sample mask to a Linear/Conv2d. `mask` is a LayerMask or None (plain layer)."""

    mask: LayerMask | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return super().forward(x)
        return masked_forward(self, x, self.mask)


class MaskedLinear(MaskedLayerMixin, nn.Linear):
    pass


class MaskedConv2d(MaskedLayerMixin, nn.Conv2d):
    pass


_MASKED_CLASS = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}


def install_masked_layer(module: nn.Module) -> None:
    """Swap a Linear/Conv2d's class in place for its masked twin (idempotent)."""
    if isinstance(module, MaskedLayerMixin):
        return
    masked_cls = _MASKED_CLASS.get(type(module))
    if masked_cls is None:
        raise TypeError(f"cannot mask a {type(module).__name__}; only nn.Linear and nn.Conv2d")
    module.__class__ = masked_cls
    module.mask = None


def remove_masked_layer(module: nn.Module) -> None:
    if isinstance(module, MaskedLayerMixin):
        module.__class__ = module.__class__.__mro__[2]
        del module.mask
