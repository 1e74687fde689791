"""`model` and `mask` sections: which base pipeline, and how its U-Net is masked."""
from typing import Literal, Optional

from pydantic import Field, field_validator

from maskunet_platform.config.base import Section


class ModelSection(Section):
    # Local folder, HF hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or s3:// prefix.
    base: str = Field("~/.cache/maskunet/shapes-base", description="base pipeline location")
    # When `base` is a local path that does not exist, put a tiny offline base there: the
    # shipped pretrained shapes base, or (`tiny_pretrained: false`) random weights.
    create_tiny_if_missing: bool = True
    tiny_pretrained: bool = True
    tiny_seed: int = 0
    revision: Optional[str] = None
    # torch.compile the U-Net (masked or not) in training and serving: auto = where CUDA is
    # present. A compile failure falls back to eager with one warning (maskunet/compile.py).
    compile: Literal["auto", "on", "off"] = Field("auto", description="auto | on | off")

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        # YAML 1.1 reads a bare on / off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class MaskSection(Section):
    layers: str = Field("attn", description="attn | linear | attn+conv | comma-separated regexes")
    reduction: int = Field(4, ge=1)
    hidden: int = Field(64, ge=1)
    logit_bias: float = 5.0
    tau: float = Field(1.0, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1)
    # An extension (off = the paper's generator): each block's mask code also sees the mean
    # text-encoder state, so a prompt's words (a subject's identifier) can change the masks directly.
    text_conditioning: bool = False
    # Optional target-sparsity penalty weight * (rho - target)^2; weight 0 = off (the paper's setting).
    target_sparsity: float = Field(0.03, ge=0, le=1)
    sparsity_weight: float = Field(0.0, ge=0)
