"""The masked layers' autograd function: memory proportional to a compact mask.

`y_b = x_b (W * m_b)^T + bias` needs, for backward, the input x and the mask, not the
per-sample masked weights: `W * m_b` is recomputed from the frozen W and the mask. A layer's
logits, noise and fp32 scores z are computed when the layer runs and live only during its
forward; what is kept per masked entry is the straight-through derivative sigmoid'(z) as a
bf16 whose sign is the mask bit (2 bytes: kept iff the sign bit is clear; -0.0 marks a
dropped entry whose derivative underflowed). Without a gradient to the mask, a bool (1 byte).
Autograd over `W * m` and `bmm` would instead keep the masked weights (2-4 bytes), the float
mask (4) and the sigmoid (4) alive through backward.

Masks have a batch dimension: (B, out, fan_in) for one mask per sample, or (1, out,
fan_in) for one mask shared by the batch (a plain F.linear / conv2d then). Convolution
masks are per kernel, (B, out, in): a whole k x k kernel is kept or dropped.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from maskunet.gumbel import mask_scores, sigmoid_derivative


@dataclass
class LayerMask:
    """How one masked layer gets its mask in one call; evaluated when the layer runs (so the
    recompute of gradient checkpointing, which restores the RNG state, gets the same mask)."""

    logits: Callable[[], torch.Tensor]  # (B or 1, out, fan_in) mask logits
    tau: float = 1.0
    z_min: float = 0.0  # keep iff z = (L + eps) / tau > z_min = logit(threshold)
    stochastic: bool = False
    on_scores: Callable[[torch.Tensor, torch.Tensor], None] | None = None  # (logits, bool mask): statistics


class PreparedMask:
    """One layer's share of masks computed for several layers at once (MaskedUNet's block
    path): views into the group's tensors, handed over once, so the group's storage is freed
    as its last layer runs."""

    def __init__(self, hard: torch.Tensor, scores: torch.Tensor | None = None, saved: torch.Tensor | None = None,
                 weights: torch.Tensor | None = None):
        self._parts = (hard, scores, saved, weights)

    def take(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(bool mask, fp32 scores with grad or None, bf16 straight-through derivative or None,
        masked weights (B, *W.shape) in the compute dtype or None)."""
        if self._parts is None:
            raise RuntimeError("this prepared mask was already used: a masked layer ran twice in one U-Net call")
        parts, self._parts = self._parts, None
        return parts


def signed_derivative(scores: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """What backward keeps per entry: sigmoid'(z) as bf16, its sign the mask bit (-0.0: dropped)."""
    derivative = sigmoid_derivative(scores.detach())
    return torch.where(hard, derivative, -derivative).to(torch.bfloat16)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The active autocast dtype on this device type, None when off (or not available, e.g. meta)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_off(device_type: str):
    """A context that disables autocast on this device type (a no-op context where it is off:
    entering a real one costs host time in every masked layer)."""
    if autocast_dtype(device_type) is not None:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What F.linear would compute in: the autocast dtype when autocast is on, else W's."""
    return autocast_dtype(x.device.type) or weight.dtype


def _mask_factor(hard: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The bool mask (..., out, fan_in) as a uint8 factor (2x faster than bool), broadcast over
    a convolution's kernel window (masks are per kernel)."""
    return hard.view(torch.uint8).view(*hard.shape, *([1] * (weight.dim() - 2)))


def _masked_weight(weight: torch.Tensor, hard: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, *weight.shape) masked weights from (B, out, fan_in) masks."""
    return weight.to(dtype).unsqueeze(0) * _mask_factor(hard, weight)


def group_masked_weights(layers: list, hard: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(L, B, *W.shape) masked weights of L same-shape layers from their (L, B, out, fan_in)
    masks: one stack and one product for the group instead of one product per layer."""
    weights = torch.stack([layer.weight for layer in layers]).to(dtype)
    return weights.unsqueeze(1) * _mask_factor(hard, layers[0].weight)


def _mask_grad(grad_weights: torch.Tensor, weight: torch.Tensor, hard_shape: torch.Size) -> torch.Tensor:
    """fp32 d loss / d mask from d loss / d (W * m) (overwritten): times W, summed over a kernel
    window if per kernel. The product is taken in the compute dtype, then widened once."""
    grad = grad_weights.mul_(weight.to(grad_weights.dtype)).float()
    if grad[0].numel() != hard_shape[1:].numel():
        grad = grad.flatten(3).sum(-1)  # per-kernel mask: the window shares one entry
    return grad.reshape(hard_shape)


class _LinearOp:
    """x: (..., in); masked weights (B, out, in)."""

    @staticmethod
    def forward(x, weights, bias, layer):
        if weights.shape[0] == 1:
            return F.linear(x, weights[0], bias)
        batch = weights.shape[0]
        flat = x.reshape(batch, -1, x.shape[-1])
        if bias is None:
            out = torch.bmm(flat, weights.transpose(1, 2))
        else:
            out = torch.baddbmm(bias, flat, weights.transpose(1, 2))
        return out.reshape(*x.shape[:-1], weights.shape[1])

    @staticmethod
    def grads(x, weights, grad_out, layer, need_x: bool):
        batch = weights.shape[0]
        flat_x = x.reshape(batch, -1, x.shape[-1])
        flat_g = grad_out.reshape(batch, -1, grad_out.shape[-1])
        grad_w = torch.bmm(flat_g.transpose(1, 2), flat_x)  # (B', out, in)
        grad_x = torch.bmm(flat_g, weights.expand(batch, -1, -1)).reshape(x.shape) if need_x else None
        return grad_x, grad_w


class _ConvOp:
    """Per-sample kernels as one grouped convolution: sample b is group b."""

    @staticmethod
    def _geometry(layer):
        return layer.stride, layer.padding, layer.dilation

    @staticmethod
    def forward(x, weights, bias, layer):
        if layer.padding_mode != "zeros":
            raise NotImplementedError("masked convolutions support zero padding only")
        stride, padding, dilation = _ConvOp._geometry(layer)
        if weights.shape[0] == 1:
            return F.conv2d(x, weights[0], bias, stride, padding, dilation, layer.groups)
        batch = weights.shape[0]
        grouped = x.reshape(1, batch * x.shape[1], *x.shape[2:])
        kernels = weights.reshape(batch * weights.shape[1], *weights.shape[2:])
        bias = None if bias is None else bias.repeat(batch)
        out = F.conv2d(grouped, kernels, bias, stride, padding, dilation, layer.groups * batch)
        return out.reshape(batch, -1, *out.shape[2:])

    @staticmethod
    def grads(x, weights, grad_out, layer, need_x: bool):
        stride, padding, dilation = _ConvOp._geometry(layer)
        batch, shared = x.shape[0], weights.shape[0] == 1
        groups = layer.groups * (1 if shared else batch)
        inputs = x if shared else x.reshape(1, -1, *x.shape[2:])
        grads = grad_out if shared else grad_out.reshape(1, -1, *grad_out.shape[2:])
        kernels = weights.reshape(-1, *weights.shape[2:])
        grad_x = None
        if need_x:
            grad_x = torch.nn.grad.conv2d_input(inputs.shape, kernels, grads, stride, padding, dilation, groups)
            grad_x = grad_x.reshape(x.shape)
        grad_w = torch.nn.grad.conv2d_weight(inputs, kernels.shape, grads, stride, padding, dilation, groups)
        return grad_x, grad_w.reshape(weights.shape)


class MaskedForward(torch.autograd.Function):
    """y = op(x, W * m, bias) with m = 1[scores > z_min] (or a given bool mask); gradient to x
    and the scores (straight-through: sigmoid'(z))."""

    @staticmethod
    def forward(ctx, x, weight, bias, scores, hard, layer, op, saved=None, weights=None):
        dtype = _compute_dtype(x, weight)
        if scores is None:
            saved = hard
        elif saved is None:
            saved = signed_derivative(scores, hard)
        with autocast_off(x.device.type):
            x = x.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            if weights is None or weights.dtype != dtype:
                weights = _masked_weight(weight, hard, dtype)
            out = op.forward(x, weights, bias, layer)
        ctx.save_for_backward(x, weight, saved)
        ctx.layer, ctx.op, ctx.dtype, ctx.has_scores = layer, op, dtype, scores is not None
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, saved = ctx.saved_tensors
        hard = ~torch.signbit(saved) if ctx.has_scores else saved
        need_x, need_w, need_b, need_scores = ctx.needs_input_grad[:4]
        with autocast_off(x.device.type):
            grad_out = grad_out.to(ctx.dtype)
            weights = _masked_weight(weight, hard, ctx.dtype)
            grad_x, grad_weights = ctx.op.grads(x, weights, grad_out, ctx.layer, need_x)
            del weights
            grad_w = None
            if need_w:  # masks are meant for frozen weights, but stay correct if W trains
                ones = _masked_weight(torch.ones_like(weight), hard, grad_weights.dtype)
                grad_w = (grad_weights * ones).sum(0).to(weight.dtype)
            grad_scores = None
            if need_scores:
                grad_scores = _mask_grad(grad_weights, weight, saved.shape).mul_(saved.abs())
            grad_b = None
            if need_b and ctx.has_bias:
                channel = grad_out.dim() - 1 if ctx.op is _LinearOp else 1
                grad_b = grad_out.sum([d for d in range(grad_out.dim()) if d != channel])
        grad_x = None if grad_x is None else grad_x.to(x.dtype)
        return grad_x, grad_w, grad_b, grad_scores, None, None, None, None, None


def masked_forward(layer, x: torch.Tensor, mask: LayerMask | PreparedMask) -> torch.Tensor:
    """Run `layer` with its mask: computed here from a LayerMask's logits, or handed over ready."""
    device = x.device.type
    weights = None
    if isinstance(mask, PreparedMask):
        hard, scores, saved, weights = mask.take()
    else:
        with autocast_off(device):  # the mask path stays fp32 (see gumbel.py)
            logits = mask.logits()
            scores = mask_scores(logits, mask.tau, mask.stochastic)
        hard, saved = scores > mask.z_min, None
        if mask.on_scores is not None:
            mask.on_scores(logits, hard)
        del logits
    op = _ConvOp if layer.weight.dim() == 4 else _LinearOp
    if scores is not None and scores.requires_grad:
        return MaskedForward.apply(x, layer.weight, layer.bias, scores, hard, layer, op, saved, weights)
    del scores, saved
    bias_grad = layer.bias is not None and layer.bias.requires_grad
    if not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad or bias_grad)):
        # Nothing to differentiate (sampling, serving): the op directly, no autograd node.
        dtype = _compute_dtype(x, layer.weight)
        bias = None if layer.bias is None else layer.bias.to(dtype)
        if weights is None or weights.dtype != dtype:
            weights = _masked_weight(layer.weight, hard, dtype)
        with autocast_off(device):
            return op.forward(x.to(dtype), weights, bias, layer)
    return MaskedForward.apply(x, layer.weight, layer.bias, None, hard, layer, op, None, weights)
