"""Which U-Net decoder weights are masked, and the layers that apply per-sample masks.

Masked layers are the U-Net's own `nn.Linear`/`nn.Conv2d` modules with their class
swapped in place (same parameters, same state-dict keys, still `isinstance` of the
original class). Each computes its output once, with `W * m_b` for sample b: nothing is
registered per call and no unmasked duplicate runs.
"""
import re

import torch
import torch.nn.functional as F
from torch import nn

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
    """(out, fan_in) of the weight viewed as a matrix: conv kernels flatten to in*kh*kw."""
    w = module.weight
    return w.shape[0], w[0].numel()


class MaskedLayerMixin:
    """Adds a per-sample mask to a Linear/Conv2d. `mask` is (B, out, fan_in) or None."""

    mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return super().forward(x)
        weights = self.weight.unsqueeze(0) * self.mask.to(self.weight.dtype).view(-1, *self.weight.shape)
        return self._masked_forward(x, weights)


class MaskedLinear(MaskedLayerMixin, nn.Linear):
    def _masked_forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        batch = weights.shape[0]
        flat = x.reshape(batch, -1, x.shape[-1])
        # bmm/baddbmm follow autocast like F.linear does.
        if self.bias is None:
            out = torch.bmm(flat, weights.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias, flat, weights.transpose(1, 2))
        return out.reshape(*x.shape[:-1], weights.shape[1])


class MaskedConv2d(MaskedLayerMixin, nn.Conv2d):
    def _masked_forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # Per-sample kernels as one grouped convolution: sample b is group b.
        batch = weights.shape[0]
        grouped = x.reshape(1, batch * x.shape[1], *x.shape[2:])
        kernels = weights.reshape(batch * weights.shape[1], *weights.shape[2:])
        bias = None if self.bias is None else self.bias.repeat(batch)
        if self.padding_mode != "zeros":
            raise NotImplementedError("masked convolutions support zero padding only")
        out = F.conv2d(grouped, kernels, bias, self.stride, self.padding, self.dilation, self.groups * batch)
        return out.reshape(batch, -1, *out.shape[2:])


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
