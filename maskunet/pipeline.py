"""MaskUNetPipeline: Stable Diffusion text-to-image with a mask-generator component.

Thin on purpose: the masked layers live inside `self.unet`, so the parent pipeline's
denoising loop runs them unchanged, for both classifier-free-guidance branches and with
each sample's own mask.
"""
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

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
        if mask_generator is not None:
            mask_generator.eval()  # deterministic masks at inference
            self.masked_unet = MaskedUNet(unet, mask_generator)

    @classmethod
    def from_base(cls, base: str | Path, masks: str | Path | MaskGenerator | None = None, **kwargs):
        """Load a Stable Diffusion folder or hub id, plus an optional mask-generator folder."""
        generator = MaskGenerator.from_pretrained(masks) if isinstance(masks, (str, Path)) else masks
        kwargs.setdefault("requires_safety_checker", False)
        # One dtype for every component: transformers loads a checkpoint in its stored dtype
        # (fp16 folders stay fp16), diffusers in fp32, and the mixed pipeline cannot run.
        kwargs.setdefault("dtype", torch.float32)
        pipe = cls.from_pretrained(base, mask_generator=generator, **kwargs)
        if generator is not None:
            pipe.mask_generator.to(device=pipe.unet.device)
        return pipe

    @property
    def masks_enabled(self) -> bool:
        return self.masked_unet is not None and self.masked_unet.masks_enabled

    @masks_enabled.setter
    def masks_enabled(self, enabled: bool) -> None:
        if self.masked_unet is None:
            if enabled:
                raise ValueError("this pipeline has no mask generator; load one with from_base(..., masks=DIR)")
            return
        self.masked_unet.masks_enabled = enabled
