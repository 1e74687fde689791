"""A mask source with one free logit per masked weight entry (the training-free mode).

It drives the same masked layers as the mask generator (layers.py / masked_ops.py): each
selected layer gets a `LayerMask` whose logits are this source's per-entry tensor, of shape
(1, out, fan_in), so one mask is shared by the whole batch and both guidance branches (the
masked op then runs as a plain F.linear / conv2d with `W * m`).

Sampling: for each denoising step a logistic noise tensor eps is drawn once and kept fixed,
and the mask is m = 1[L + eps > 0], so P(keep) = sigmoid(L) (the binary concrete of
gumbel.py with tau = 1, threshold 1/2). Holding eps fixed within a step makes the mask a
deterministic function of the logits during that step's optimisation: entries near the
threshold flip as their logits move, and the straight-through gradient sigmoid'(L + eps)
is largest exactly there.
"""
import math

import torch
from torch import nn

from maskunet.layers import MaskedLayerMixin, install_masked_layer, remove_masked_layer, select_layers
from maskunet.masked_ops import LayerMask


class LogitMasks:
    def __init__(self, unet: nn.Module, layers: str = "attn"):
        self.layers = [item for group in select_layers(unet, layers).values() for item in group]
        self._installed = []  # only the layers this source swapped (a MaskedUNet may own others)
        for _, module in self.layers:
            if not isinstance(module, MaskedLayerMixin):
                install_masked_layer(module)
                self._installed.append(module)
        self.logits: dict[str, nn.Parameter] = {}
        self._noise: dict[str, torch.Tensor] = {}

    def numel(self) -> int:
        return sum(m.weight.shape[0] * m.weight.shape[1] for _, m in self.layers)

    def reset(self, keep_probability: float, generator: torch.Generator) -> list[nn.Parameter]:
        """Fresh logits logit(keep_probability) and fresh fixed noise; returns the parameters.

        The previous step's tensors are dropped here, so nothing outlives its step.
        """
        if not 0.0 < keep_probability < 1.0:
            raise ValueError(f"keep_probability must be in (0, 1), got {keep_probability}")
        init = math.log(keep_probability / (1.0 - keep_probability))
        self.logits, self._noise = {}, {}
        for name, module in self.layers:
            shape = (1, module.weight.shape[0], module.weight.shape[1])
            device = module.weight.device
            self.logits[name] = nn.Parameter(torch.full(shape, init, device=device, dtype=torch.float32))
            # Drawn on the CPU from a seeded generator: the same masks on any device.
            noise = torch.rand(shape, generator=generator, dtype=torch.float32).logit_(eps=1e-6)
            self._noise[name] = noise.to(device)
        return list(self.logits.values())

    def _scores(self, name: str) -> torch.Tensor:
        return self.logits[name] + self._noise[name]

    def attach(self) -> None:
        """Masks on: every selected layer runs with 1[L + eps > 0] until detach()."""
        if not self.logits:
            raise RuntimeError("LogitMasks.attach before reset(): no logits yet")
        for name, module in self.layers:
            module.mask = LayerMask(lambda name=name: self._scores(name), tau=1.0, z_min=0.0, stochastic=False)

    def detach(self) -> None:
        for _, module in self.layers:
            module.mask = None

    @torch.no_grad()
    def hard_masks(self) -> dict[str, torch.Tensor]:
        """The current binary masks {layer: bool (1, out, fan_in)}, True = kept."""
        return {name: self._scores(name) > 0 for name in self.logits}

    @torch.no_grad()
    def drop_fractions(self) -> dict[str, float]:
        """Per layer, the fraction of entries the current mask drops."""
        return {name: (self._scores(name) <= 0).float().mean().item() for name in self.logits}

    def remove(self) -> None:
        """Masks off and the layers this source swapped restored to their plain classes."""
        self.detach()
        for module in self._installed:
            remove_masked_layer(module)
        self._installed = []
        self.logits, self._noise = {}, {}
