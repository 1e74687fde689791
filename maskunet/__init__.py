"""MaskUNet: timestep- and sample-dependent binary masks over a frozen diffusion U-Net.

torch + diffusers only; the Ray/MLflow platform lives in `maskunet_platform`.

The public names are imported on first use (PEP 562): `import maskunet.training` in a
training worker then costs what training needs, not the whole text-to-image pipeline
stack (diffusers' pipelines pull in transformers' processors: seconds per process).
"""
import importlib

_EXPORTS = {
    "MaskConfig": "maskunet.generator",
    "MaskGenerator": "maskunet.generator",
    "gumbel_sigmoid": "maskunet.gumbel",
    "keep_probability": "maskunet.gumbel",
    "MaskedUNet": "maskunet.masked_unet",
    "sparsity_penalty": "maskunet.masked_unet",
    "MaskUNetPipeline": "maskunet.pipeline",
    "TrainingFreeConfig": "maskunet.training_free",
    "TrainingFreeSampler": "maskunet.training_free",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'maskunet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
