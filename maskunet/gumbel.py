"""Hard Gumbel-sigmoid (binary concrete) with a straight-through gradient.

With logistic noise eps, temperature tau and threshold delta:
    z = (L + eps) / tau,   y = sigmoid(z),   m = 1[y > delta] = 1[z > logit(delta)]
    m_st = m - stopgrad(y) + y      (forward m, backward dy/dL = sigmoid'(z) / tau)
so P(keep) = sigmoid(L - tau * logit(delta)). The deterministic mode (inference default)
uses eps = 0: it keeps an entry iff L > tau * logit(delta), i.e. iff P(keep) > 1/2.

Everything here runs in fp32 whatever the logits' dtype: in bf16, sigmoid(5) rounds to 1
and a fifth of the entries would get an exactly zero gradient. The scores z are the only
mask state a training step needs to keep for backward (4 bytes per entry): the binary
mask is `z > logit(delta)` and the straight-through gradient is sigmoid'(z).
"""
import math

import torch


def keep_threshold(tau: float, threshold: float) -> float:
    """The logit above which an entry is kept: tau * logit(threshold)."""
    return tau * math.log(threshold / (1.0 - threshold))


def keep_probability(logits: torch.Tensor, tau: float = 1.0, threshold: float = 0.5) -> torch.Tensor:
    return torch.sigmoid(logits.float() - keep_threshold(tau, threshold))


def mask_scores(
    logits: torch.Tensor,
    tau: float = 1.0,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """z = (L + eps) / tau in fp32 (eps = 0 when deterministic); the mask is z > logit(delta)."""
    logits = logits.float()
    if not stochastic:
        return logits if tau == 1.0 else logits / tau
    noise = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    noise.logit_(eps=1e-6)  # logistic(0, 1), in place: one temporary for the noise
    return torch.add(logits, noise).div_(tau)


class StraightThrough(torch.autograd.Function):
    """Forward: the hard mask 1[z > z_min]; backward: sigmoid'(z). Saves only z."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, z_min: float) -> torch.Tensor:
        ctx.save_for_backward(scores)
        return (scores > z_min).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scores,) = ctx.saved_tensors
        return grad * sigmoid_derivative(scores), None


def sigmoid_derivative(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s.mul_(1.0 - s)


def gumbel_sigmoid(
    logits: torch.Tensor,
    tau: float = 1.0,
    threshold: float = 0.5,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Binary fp32 mask from logits: hard 0/1 values forward, sigmoid gradient backward.

    stochastic=False thresholds the logits (no noise); its gradient is still the
    straight-through sigmoid so the deterministic mode stays trainable for parity studies.
    """
    z_min = math.log(threshold / (1.0 - threshold))
    scores = mask_scores(logits, tau, stochastic, generator)
    if not scores.requires_grad:
        return (scores > z_min).float()
    return StraightThrough.apply(scores, z_min)
