"""Hard Gumbel-sigmoid (binary concrete) with a straight-through gradient.

With logistic noise eps, temperature tau and threshold delta:
    y = sigmoid((L + eps) / tau),   m = 1[y > delta],   m_st = m - stopgrad(y) + y
so P(keep) = sigmoid(L - tau * logit(delta)). The deterministic mode (inference default)
keeps an entry iff L > tau * logit(delta), i.e. iff P(keep) > 1/2.
"""
import math

import torch


def keep_threshold(tau: float, threshold: float) -> float:
    """The logit above which an entry is kept: tau * logit(threshold)."""
    return tau * math.log(threshold / (1.0 - threshold))


def keep_probability(logits: torch.Tensor, tau: float = 1.0, threshold: float = 0.5) -> torch.Tensor:
    return torch.sigmoid(logits - keep_threshold(tau, threshold))


def gumbel_sigmoid(
    logits: torch.Tensor,
    tau: float = 1.0,
    threshold: float = 0.5,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Binary mask from logits: hard 0/1 values forward, sigmoid gradient backward.

    stochastic=False thresholds the logits (no noise); its gradient is still the
    straight-through sigmoid so the deterministic mode stays trainable for parity studies.
    """
    if stochastic:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        u = u.clamp_(1e-6, 1.0 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)  # logistic(0, 1)
        soft = torch.sigmoid((logits + noise) / tau)
        hard = (soft > threshold).to(logits.dtype)
    else:
        soft = torch.sigmoid(logits / tau)
        hard = (logits > keep_threshold(tau, threshold)).to(logits.dtype)
    if not logits.requires_grad:
        return hard
    return hard - soft.detach() + soft
