"""The reward objective in a training worker (train.objective reward | both).

Each step draws `reward.batch_size` training captions (the shapes world's, never the
benchmark's), samples them with the trained model from seeded noise, scores the images with
the job's rewards and returns -reward for the step's loss (maskunet/reward_training.py).
Captions and noise come from the worker's step-seeded stream, so a resumed run repeats them.
"""
from __future__ import annotations

import numpy as np
import torch

from maskunet_platform.config import JobConfig
from maskunet_platform.train.base import FrozenBase


def text_states(base: FrozenBase, prompts: list[str], device, dtype) -> torch.Tensor:
    """Frozen text-encoder states of `prompts`, tokenised as the training data is."""
    from maskunet.training import encode_prompts
    from maskunet_platform.data.preprocess import tokenize

    ids = torch.from_numpy(tokenize(prompts, base.tokenizer))
    return encode_prompts(base.text_encoder, ids.to(device)).to(dtype)


def training_prompts(n: int, rng: torch.Generator) -> list[str]:
    """`n` shapes-world training captions (benchmark captions held out), drawn from `rng`."""
    from maskunet_platform.data.sample import training_scene

    scenes = np.random.default_rng(int(torch.randint(2**62, (1,), generator=rng)))
    return [training_scene(scenes)[2] for _ in range(n)]


class RewardObjective:
    """-weighted reward of images sampled with the trained model, per step."""

    def __init__(self, job: JobConfig, base: FrozenBase, device, dtype):
        from maskunet.reward_training import RewardSampling, ddim_scheduler
        from maskunet.rewards import build_reward

        settings = job.train.reward
        self.reward = build_reward(settings.rewards, device)
        self.sampling = RewardSampling(settings.steps, settings.backprop_steps, settings.guidance,
                                       settings.truncation)
        self.scheduler = ddim_scheduler(base.noise_scheduler)
        self.batch_size, self.device, self.dtype = settings.batch_size, device, dtype
        self.uncond = text_states(base, [""], device, dtype) if settings.guidance > 1 else None
        scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
        side = job.data.resolution // scale
        self.latent_shape = (settings.batch_size, base.unet.config.in_channels, side, side)

    def loss(self, model, base: FrozenBase, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(-mean reward of this step's images, per-image rewards detached)."""
        from maskunet.reward_training import reward_loss

        prompts = training_prompts(self.batch_size, rng)
        states = text_states(base, prompts, self.device, self.dtype)
        uncond = None if self.uncond is None else self.uncond.expand(len(prompts), -1, -1)
        noise = torch.randn(self.latent_shape, generator=rng).to(self.device, self.dtype)
        return reward_loss(model, base.vae, self.scheduler, self.reward, prompts, states, uncond, noise,
                           self.sampling, rng)
