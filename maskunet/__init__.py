"""MaskUNet: timestep- and sample-dependent binary masks over a frozen diffusion U-Net.

torch + diffusers only; the Ray/MLflow platform lives in `maskunet_platform`.
"""
from maskunet.generator import MaskConfig, MaskGenerator
from maskunet.gumbel import gumbel_sigmoid, keep_probability
from maskunet.masked_unet import MaskedUNet, sparsity_penalty
from maskunet.pipeline import MaskUNetPipeline
from maskunet.training_free import TrainingFreeConfig, TrainingFreeSampler

__all__ = [
    "MaskConfig",
    "MaskGenerator",
    "MaskedUNet",
    "MaskUNetPipeline",
    "TrainingFreeConfig",
    "TrainingFreeSampler",
    "gumbel_sigmoid",
    "keep_probability",
    "sparsity_penalty",
]
