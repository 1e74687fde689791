"""Reward-trained masks: sample a short schedule with the masked U-Net, score the image, back-propagate.

The amortised form of the training-free masks (training_free.py): instead of optimising
mask logits per prompt at sampling time, the mask generator is trained across prompts on
the same differentiable rewards (rewards.py), so one plain-cost generation uses masks that
the generator predicts for a new prompt.

Gradient estimator: truncated back-propagation through the sampler (DRaFT-K, AlignProp).
The rewards here are differentiable in the image, so the exact gradient of K steps has far
less variance than a policy-gradient (DDPO) estimate from the same few samples per step,
and K bounds memory: the U-Net calls before the window run without a graph, only the K in
it (and the VAE decode) keep one, and the image scored is the clean image x0 predicted at
the window's last step (the final image when the window ends the schedule). The window is
the schedule's last K steps (`truncation="last"`, DRaFT-K), or starts at a random step
(`"random"`): composition (which colour goes where) is decided in the early, noisy steps,
which the last steps' gradient never reaches; scoring x0 there is what the training-free
masks do per step. The sampler is DDIM with eta 0 (deterministic given the masks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from maskunet.training import decode_to_unit


@dataclass(frozen=True)
class RewardSampling:
    steps: int = 10  # DDIM steps of the sampled schedule
    backprop_steps: int = 1  # K: the steps in the window keep a graph (truncated back-propagation)
    guidance: float = 7.5  # classifier-free guidance scale; <= 1: conditional branch only
    truncation: str = "random"  # where the window lies: "last" K steps, or from a "random" step


def ddim_scheduler(train_scheduler):
    """A DDIM sampler with the base's noise schedule and prediction type."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_scheduler.config)


def window_start(sampling: RewardSampling, rng: torch.Generator | None = None) -> int:
    """Index of the first step with a graph."""
    last = sampling.steps - min(sampling.backprop_steps, sampling.steps)
    if sampling.truncation == "last" or last == 0:
        return last
    return int(torch.randint(last + 1, (1,), generator=rng))


def sample_x0_with_grad(model, scheduler, text_states: torch.Tensor, uncond_states: torch.Tensor | None,
                        noise: torch.Tensor, sampling: RewardSampling, start: int) -> torch.Tensor:
    """The clean latents x0 predicted at the last step of the window [start, start + K) of a
    DDIM run from `noise`; only the window's U-Net calls keep a graph."""
    scheduler.set_timesteps(sampling.steps)
    end = min(start + sampling.backprop_steps, len(scheduler.timesteps))
    latents = noise * scheduler.init_noise_sigma
    guided = uncond_states is not None and sampling.guidance > 1
    states = torch.cat([uncond_states, text_states]) if guided else text_states
    for i, t in enumerate(scheduler.timesteps[:end]):
        with torch.set_grad_enabled(i >= start and torch.is_grad_enabled()):
            model_in = torch.cat([latents, latents]) if guided else latents
            step_t = t.expand(model_in.shape[0]).to(latents.device)
            prediction = model(scheduler.scale_model_input(model_in, t), step_t, states).sample
            if guided:
                uncond, cond = prediction.float().chunk(2)
                prediction = uncond + sampling.guidance * (cond - uncond)
            out = scheduler.step(prediction.to(latents.dtype), t, latents, eta=0.0)
            latents = out.prev_sample
    return out.pred_original_sample


def reward_loss(model, vae, scheduler, reward, prompts: list[str], text_states: torch.Tensor,
                uncond_states: torch.Tensor | None, noise: torch.Tensor, sampling: RewardSampling,
                rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise = -mean reward, per-image rewards detached) for one batch of prompts."""
    start = window_start(sampling, rng)
    latents = sample_x0_with_grad(model, scheduler, text_states, uncond_states, noise, sampling, start)
    rewards = reward(decode_to_unit(vae, latents), prompts)
    return -rewards.mean(), rewards.detach()
