"""What a training run trains (`train.method`): the mask generator, a LoRA, or the whole U-Net.

Each method builds a `Trainee` around the frozen base; the loop, engine, checkpoints, export
and evaluation only talk to that small surface, so the training step reads the same for all
three. Pure-torch parts live in maskunet (masked_unet.py, baselines.py).
"""
from maskunet_platform.train.methods.base import EXPORT_NAMES, Trainee, build_trainee, paired_switch

__all__ = ["EXPORT_NAMES", "Trainee", "build_trainee", "paired_switch"]
