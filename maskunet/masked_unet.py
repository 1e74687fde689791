"""MaskedUNet: a diffusers UNet2DConditionModel whose decoder weights get per-sample masks.

No forward is copied: the selected layers are swapped in place for masked twins, and one
forward pre-hook per masked up-block (registered once, at construction) computes that
block's masks from the tensors diffusers passes it (hidden state, skips, time embedding).

Two paths give the same masks. The block path (default) computes all of a block's masks in
one batched chain per weight shape (logits, noise, scores, bits: a handful of ops per block
instead of per layer, since on small layers and on GPUs the per-op launch cost, not the
arithmetic, dominates) and hands each layer its view. The layer path stores per layer a
recipe that the layer evaluates when it runs; it is the reference, and what gradient
checkpointing uses, because its recompute must re-create each mask inside the recomputed
module (with the RNG state restored) rather than keep a block's fp32 scores until backward.
"""
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from maskunet.generator import MaskGenerator
from maskunet.gumbel import keep_probability, keep_threshold, mask_scores
from maskunet.layers import install_masked_layer, remove_masked_layer, select_layers
from maskunet.masked_ops import (LayerMask, PreparedMask, autocast_dtype, autocast_off, group_masked_weights,
                                 signed_derivative)


# On CPU the block path pays only on small layers, where per-op overhead dominates: at SD1.5
# scale (bf16, 8x8 latents) it measured 73 s per training step against the layer path's 57 s
# (batched bf16 products are slower there than 2-D ones, and group tensors above glibc's mmap
# threshold page-fault in anew on every call). Larger layers take the layer path on CPU.
CPU_BATCHED_LAYER_ELEMENTS = 2**17  # B * out * fan_in of one layer


class MaskedUNet(nn.Module):
    def __init__(self, unet: nn.Module, generator: MaskGenerator, stochastic: bool | None = None):
        super().__init__()
        if getattr(unet, "_maskunet_attached", False):
            raise ValueError("this U-Net already has a mask generator attached; call .unwrap() on that MaskedUNet first")
        generator.check_fits(unet)
        self.unet = unet.requires_grad_(False)
        self.generator = generator
        self.masks_enabled = True
        self._paused = False  # see paused()
        # None: stochastic Gumbel masks while the generator is in train mode, thresholding in eval mode.
        self.stochastic = stochastic
        self._groups = select_layers(unet, generator.config.layers)
        self.mask_path = "block"  # "block": batched per block and weight shape; "layer": the reference
        self._shape_groups = {index: _by_shape(layers) for index, layers in self._groups.items()}
        # diffusers' is_gradient_checkpointing walks every module (~2 ms on the tiny U-Net, per
        # call); only the modules of masked blocks that can checkpoint matter here.
        self._checkpointers = {index: [m for m in unet.up_blocks[index].modules() if hasattr(m, "gradient_checkpointing")]
                               for index in self._groups}
        # Statistics of the last call per layer (see mask_stats); the options cost memory/compute.
        self._stats: dict[str, dict] = {}
        self.keep_last_masks = False  # keep each layer's bool mask (1 byte per entry) for last_masks()
        self.track_drop_probability = False  # per-layer drop probability, differentiable: expected_sparsity()
        for layers in self._groups.values():
            for _, module in layers:
                install_masked_layer(module)
        self._hooks = [
            unet.up_blocks[index].register_forward_pre_hook(partial(self._set_block_masks, index), with_kwargs=True)
            for index in self._groups
        ]
        self._text = None  # this call's encoder_hidden_states, for a text-conditioned generator
        if generator.config.get("text", False):
            self._hooks.append(unet.register_forward_pre_hook(self._capture_text, with_kwargs=True))
        self._hooks.append(unet.register_forward_hook(self._release_masks))
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

    @contextmanager
    def paused(self):
        """Hooks off: the masked layers keep whatever mask another source sets (the training-free
        sampler's logits) and run unmasked otherwise, so one loaded pipeline serves both modes."""
        self._paused = True
        try:
            yield self.unet
        finally:
            self._paused = False
            for _, layer in self.masked_layers():
                layer.mask = None

    def masked_layers(self) -> list[tuple[str, nn.Module]]:
        return [item for layers in self._groups.values() for item in layers]

    def _set_block_masks(self, index: int, block: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._paused:
            return
        layers = self._groups[index]
        if not self.masks_enabled:
            for name, module in layers:
                module.mask = None
                self._stats.pop(name, None)
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        skips = kwargs["res_hidden_states_tuple"] if "res_hidden_states_tuple" in kwargs else args[1]
        temb = kwargs["temb"] if "temb" in kwargs else args[2]
        # diffusers' up-blocks consume skips from the end: the first resnet gets skips[-1].
        # The generator, its logits, noise and scores stay fp32 under autocast (see gumbel.py);
        # only the adapters' low-rank expansion runs in the base's precision (see LayerAdapter).
        device = hidden.device.type
        compute_dtype = autocast_dtype(device) or hidden.dtype
        with autocast_off(device):
            code = self.generator.block_code(index, hidden, skips[-1], temb, self._text)
        cfg = self.generator.config
        stochastic = self.generator.training if self.stochastic is None else self.stochastic
        z_min = keep_threshold(1.0, cfg.threshold)  # scores are already divided by tau
        reference = self.mask_path == "layer" or self._checkpointing(index) or self._partitioned()
        for group in self._shape_groups[index]:
            if reference or not _batch_pays(group, code):
                for name, module in group:  # each layer computes its logits when it runs
                    logits = partial(self.generator.layer_logits, name, code, compute_dtype)
                    module.mask = LayerMask(logits, cfg.tau, z_min, stochastic, partial(self._record, name))
            else:
                self._prepare_group(group, code, compute_dtype, stochastic, z_min)

    def _prepare_group(self, group: list, code: torch.Tensor, compute_dtype: torch.dtype, stochastic: bool,
                       z_min: float) -> None:
        """The block path for one shape group: logits, scores and bits of its L layers at once
        (and, for a frozen W, their masked weights), each layer handed its views."""
        names, modules = [name for name, _ in group], [module for _, module in group]
        device = code.device.type
        with autocast_off(device):
            logits = self.generator.group_logits(names, code, compute_dtype)  # (L, B, out, fan_in)
            scores = mask_scores(logits, self.generator.config.tau, stochastic)
        hard = scores > z_min
        self._record_group(names, logits, hard)
        del logits
        none = [None] * len(group)
        with_grad = scores.requires_grad
        saved = signed_derivative(scores, hard).unbind(0) if with_grad else none
        layer_scores = scores.unbind(0) if with_grad else none
        weights = none
        if not any(m.weight.requires_grad for m in modules):  # frozen W: one product for the group
            dtype = compute_dtype if autocast_dtype(device) else modules[0].weight.dtype
            weights = group_masked_weights(modules, hard, dtype).unbind(0)
        for module, *parts in zip(modules, hard.unbind(0), layer_scores, saved, weights):
            module.mask = PreparedMask(*parts)

    def _partitioned(self) -> bool:
        """DeepSpeed ZeRO-3 partitions the generator's parameters and gathers a module's only
        around its own forward: the block path reads adapters' parameters without calling them."""
        return hasattr(next(iter(self.generator.adapters.parameters())), "ds_id")

    def _checkpointing(self, index: int) -> bool:
        """Whether block `index` may recompute its layers in backward (gradient checkpointing)."""
        return torch.is_grad_enabled() and any(m.gradient_checkpointing for m in self._checkpointers[index])

    def _record(self, name: str, logits: torch.Tensor, hard: torch.Tensor) -> None:
        """Per-layer statistics of this call (the layer path): a group of one."""
        self._record_group([name], logits.unsqueeze(0), hard.unsqueeze(0))

    def _record_group(self, names: list[str], logits: torch.Tensor, hard: torch.Tensor) -> None:
        """Statistics of this call for L layers' (L, B, out, fan_in) logits and bool masks, one
        reduction per statistic: small tensors only, no host sync."""
        with torch.no_grad():
            kept = hard.flatten(2).sum(2)
        drop_prob = None
        if self.track_drop_probability:
            cfg = self.generator.config
            drop_prob = 1.0 - keep_probability(logits, cfg.tau, cfg.threshold).flatten(2).mean(2)
        numel = hard[0, 0].numel()
        for i, name in enumerate(names):
            stats = {"kept": kept[i], "numel": numel}
            if self.keep_last_masks:
                stats["mask"] = hard[i]
            if drop_prob is not None:
                stats["drop_prob"] = drop_prob[i]
            self._stats[name] = stats

    def _capture_text(self, module, args: tuple, kwargs: dict) -> None:
        # UNet2DConditionModel.forward(sample, timestep, encoder_hidden_states, ...)
        self._text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]

    def _release_masks(self, module, args, output) -> None:
        """After a call, masks are dropped from the layers (autograd keeps what backward needs),
        except while gradient checkpointing may still recompute blocks from them."""
        self._text = None
        if self._paused:
            return
        if not any(self._checkpointing(index) for index in self._groups):
            for _, layer in self.masked_layers():
                layer.mask = None

    # ---- statistics of the last call -------------------------------------------------
    def expected_sparsity(self) -> torch.Tensor:
        """rho: size-weighted mean drop probability over all masked entries (differentiable).

        Needs `track_drop_probability = True` before the call (it costs a sigmoid over every
        mask entry, and with grad 4 bytes per entry kept for backward, so it is opt-in).
        """
        if not self.track_drop_probability:
            raise RuntimeError("expected_sparsity needs masked.track_drop_probability = True before the forward pass")
        if not self._stats:
            raise RuntimeError("no masks yet: run a forward pass with masks enabled first")
        total = sum(s["numel"] for s in self._stats.values())
        return sum(s["numel"] * s["drop_prob"].mean() for s in self._stats.values()) / total

    def last_masks(self) -> dict[str, torch.Tensor]:
        """Per-sample binary masks of the last call: {layer: bool (B, out, fan_in)}; needs keep_last_masks."""
        if not self.keep_last_masks:
            raise RuntimeError("last_masks needs masked.keep_last_masks = True before the forward pass")
        return {name: s["mask"] for name, s in self._stats.items()}

    @torch.no_grad()
    def mask_stats(self, per_sample: bool = False) -> dict:
        """{"layers": {name: {numel, drop_fraction[, drop_prob]}}, "rho": float | None} of the last call.

        rho (expected drop fraction) is reported when track_drop_probability was on.
        """
        layers = {}
        for name, s in self._stats.items():
            drop = 1.0 - s["kept"].double() / s["numel"]
            layers[name] = {"numel": s["numel"], "drop_fraction": drop.mean().item()}
            if "drop_prob" in s:
                layers[name]["drop_prob"] = s["drop_prob"].mean().item()
            if per_sample:
                layers[name]["per_sample_drop_fraction"] = drop.tolist()
        rho = self.expected_sparsity().item() if layers and self.track_drop_probability else None
        return {"layers": layers, "rho": rho}


def _batch_pays(group: list, code: torch.Tensor) -> bool:
    """Whether this shape group takes the block path (always off CPU; on CPU for small layers)."""
    weight = group[0][1].weight
    return code.device.type != "cpu" or code.shape[0] * weight.shape[:2].numel() <= CPU_BATCHED_LAYER_ELEMENTS


def _by_shape(layers: list[tuple[str, nn.Module]]) -> list[list[tuple[str, nn.Module]]]:
    """A block's masked layers grouped by weight shape (so by mask shape too), in module order."""
    groups: dict[tuple[int, ...], list] = {}
    for name, module in layers:
        groups.setdefault(tuple(module.weight.shape), []).append((name, module))
    return list(groups.values())


def sparsity_penalty(rho: torch.Tensor, target: float, weight: float) -> torch.Tensor:
    """The optional target-sparsity regulariser weight * (rho - target)^2."""
    return weight * (rho - target) ** 2
