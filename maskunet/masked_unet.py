"""MaskedUNet: a diffusers UNet2DConditionModel whose decoder weights get per-sample masks.

No forward is copied: the selected layers are swapped in place for masked twins, and one
forward pre-hook per masked up-block (registered once, at construction) computes that
block's masks from the tensors diffusers passes it (hidden state, skips, time embedding).
Masks are stored on the layers before the block runs, so they are also there when
gradient checkpointing recomputes the block's inner modules.
"""
from functools import partial

import torch
from torch import nn

from maskunet.generator import MaskGenerator
from maskunet.gumbel import gumbel_sigmoid, keep_probability
from maskunet.layers import install_masked_layer, remove_masked_layer, select_layers


class MaskedUNet(nn.Module):
    def __init__(self, unet: nn.Module, generator: MaskGenerator, stochastic: bool | None = None):
        super().__init__()
        if getattr(unet, "_maskunet_attached", False):
            raise ValueError("this U-Net already has a mask generator attached; call .unwrap() on that MaskedUNet first")
        generator.check_fits(unet)
        self.unet = unet.requires_grad_(False)
        self.generator = generator
        self.masks_enabled = True
        # None: stochastic Gumbel masks while the generator is in train mode, thresholding in eval mode.
        self.stochastic = stochastic
        self._groups = select_layers(unet, generator.config.layers)
        self._logits: dict[str, torch.Tensor] = {}
        for layers in self._groups.values():
            for _, module in layers:
                install_masked_layer(module)
        self._hooks = [
            unet.up_blocks[index].register_forward_pre_hook(partial(self._set_block_masks, index), with_kwargs=True)
            for index in self._groups
        ]
        unet._maskunet_attached = True

    # The wrapped model looks like the U-Net to pipelines and trainers.
    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)

    def unwrap(self) -> nn.Module:
        """Remove masks and hooks; return the plain U-Net."""
        for hook in self._hooks:
            hook.remove()
        for _, module in self.masked_layers():
            remove_masked_layer(module)
        self.unet._maskunet_attached = False
        return self.unet

    def masked_layers(self) -> list[tuple[str, nn.Module]]:
        return [item for layers in self._groups.values() for item in layers]

    def _set_block_masks(self, index: int, block: nn.Module, args: tuple, kwargs: dict) -> None:
        layers = self._groups[index]
        if not self.masks_enabled:
            for _, module in layers:
                module.mask = None
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        skips = kwargs["res_hidden_states_tuple"] if "res_hidden_states_tuple" in kwargs else args[1]
        temb = kwargs["temb"] if "temb" in kwargs else args[2]
        # diffusers' up-blocks consume skips from the end: the first resnet gets skips[-1].
        logits = self.generator.block_logits(index, hidden, skips[-1], temb)
        cfg = self.generator.config
        stochastic = self.generator.training if self.stochastic is None else self.stochastic
        for name, module in layers:
            module.mask = gumbel_sigmoid(logits[name], cfg.tau, cfg.threshold, stochastic=stochastic)
            self._logits[name] = logits[name]

    # ---- statistics of the last call -------------------------------------------------
    def expected_sparsity(self) -> torch.Tensor:
        """rho: size-weighted mean drop probability over all masked entries (differentiable)."""
        if not self._logits:
            raise RuntimeError("no masks yet: run a forward pass with masks enabled first")
        cfg = self.generator.config
        total, weighted = 0, 0.0
        for logits in self._logits.values():
            numel = logits[0].numel()
            weighted = weighted + numel * (1.0 - keep_probability(logits.float(), cfg.tau, cfg.threshold).mean())
            total += numel
        return weighted / total

    def last_masks(self) -> dict[str, torch.Tensor]:
        """Per-sample binary masks of the last call: {layer: bool (B, *weight.shape)}."""
        return {
            name: (module.mask.detach() > 0.5).view(-1, *module.weight.shape)
            for name, module in self.masked_layers()
            if module.mask is not None
        }

    @torch.no_grad()
    def mask_stats(self, per_sample: bool = False) -> dict:
        """{"layers": {name: {numel, drop_fraction, drop_prob}}, "rho": float} of the last call."""
        cfg = self.generator.config
        layers = {}
        for name, mask in self.last_masks().items():
            drop = 1.0 - mask.flatten(1).float().mean(dim=1)
            drop_prob = 1.0 - keep_probability(self._logits[name].float(), cfg.tau, cfg.threshold).flatten(1).mean(1)
            layers[name] = {
                "numel": mask[0].numel(),
                "drop_fraction": drop.mean().item(),
                "drop_prob": drop_prob.mean().item(),
            }
            if per_sample:
                layers[name]["per_sample_drop_fraction"] = drop.tolist()
        return {"layers": layers, "rho": self.expected_sparsity().item() if layers else 0.0}


def sparsity_penalty(rho: torch.Tensor, target: float, weight: float) -> torch.Tensor:
    """The optional target-sparsity regulariser weight * (rho - target)^2."""
    return weight * (rho - target) ** 2
