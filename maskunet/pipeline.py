"""MaskUNetPipeline: Stable Diffusion text-to-image with a mask-generator component.

Thin on purpose: the masked layers live inside `self.unet`, so the parent pipeline's
denoising loop runs them unchanged, for both classifier-free-guidance branches and with
each sample's own mask.

`from_base(base, masks=DIR)` also takes the baselines' exports (maskunet.baselines): a LoRA
folder or a fine-tuned U-Net folder. `masks_enabled` then switches those tuned weights on
and off (adapter enabled / tuned vs. base U-Net), so paired comparisons read the same.
"""
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from maskunet.baselines import ADAPTER, LORA_FILE, LoraSwitch, check_fits_base, find_weights
from maskunet.generator import MaskGenerator
from maskunet.masked_unet import MaskedUNet


class MaskUNetPipeline(StableDiffusionPipeline):
    _optional_components = [*StableDiffusionPipeline._optional_components, "mask_generator"]

    def __init__(
        self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker: bool = False, mask_generator: MaskGenerator | None = None,
    ):
        super().__init__(
            vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
            image_encoder, requires_safety_checker,
        )
        self.register_modules(mask_generator=mask_generator)
        self.masked_unet = None
        # What masks_enabled switches: the MaskedUNet, or a baseline's LoraSwitch / _UNetSwap.
        self.tuning = None
        self.tuning_kind = None  # "masks" | "lora" | "full" | None (plain base)
        if mask_generator is not None:
            mask_generator.eval()  # deterministic masks at inference
            self.masked_unet = self.tuning = MaskedUNet(unet, mask_generator)
            self.tuning_kind = "masks"

    @classmethod
    def from_base(cls, base: str | Path, masks: str | Path | MaskGenerator | None = None, **kwargs):
        """Load a Stable Diffusion folder or hub id, plus optional trained weights: a mask-generator
        folder, a baseline's LoRA / fine-tuned U-Net folder (see maskunet.baselines), or a training
        run's export folder holding one of them. Weights that do not fit the base: ValueError."""
        kind = "masks" if masks is not None else None
        if isinstance(masks, (str, Path)):
            kind, masks = find_weights(masks)
            check_fits_base(kind, masks, Path(base).expanduser() / "unet")
        generator = None
        if kind == "masks":
            generator = MaskGenerator.from_pretrained(masks) if isinstance(masks, (str, Path)) else masks
        kwargs.setdefault("requires_safety_checker", False)
        # One dtype for every component: transformers loads a checkpoint in its stored dtype
        # (fp16 folders stay fp16), diffusers in fp32, and the mixed pipeline cannot run.
        kwargs.setdefault("dtype", torch.float32)
        pipe = cls.from_pretrained(base, mask_generator=generator, **kwargs)
        if generator is not None:
            pipe.mask_generator.to(device=pipe.unet.device)
        if kind == "lora":
            pipe.load_lora_weights(str(masks), adapter_name=ADAPTER, weight_name=LORA_FILE)
            pipe.tuning, pipe.tuning_kind = LoraSwitch(pipe.unet), "lora"
        elif kind == "full":
            from diffusers import UNet2DConditionModel

            tuned = UNet2DConditionModel.from_pretrained(str(masks), use_safetensors=True, dtype=pipe.unet.dtype)
            pipe.tuning, pipe.tuning_kind = _UNetSwap(pipe, tuned), "full"
        return pipe

    @property
    def masks_enabled(self) -> bool:
        """Whether the tuned weights (masks, LoRA or fine-tuned U-Net) are in use."""
        return self.tuning is not None and self.tuning.masks_enabled

    @masks_enabled.setter
    def masks_enabled(self, enabled: bool) -> None:
        if self.tuning is None:
            if enabled:
                raise ValueError("this pipeline has no mask generator; load one with from_base(..., masks=DIR)")
            return
        self.tuning.masks_enabled = enabled


class _UNetSwap:
    """Full fine-tune: `pipe.unet` is the tuned U-Net while enabled, the base U-Net otherwise."""

    def __init__(self, pipe: StableDiffusionPipeline, tuned):
        self.pipe, self.base, self.tuned = pipe, pipe.unet, tuned
        self.pipe.unet = tuned

    @property
    def masks_enabled(self) -> bool:
        return self.pipe.unet is self.tuned

    @masks_enabled.setter
    def masks_enabled(self, enabled: bool) -> None:
        current = self.pipe.unet
        chosen = self.tuned if enabled else self.base
        if (chosen.device, chosen.dtype) != (current.device, current.dtype):
            chosen.to(current.device, current.dtype)
        self.pipe.unet = chosen
