"""Training-free MaskUNet: per-prompt, per-timestep mask logits optimised against rewards.

The denoising loop is the pipeline's own (diffusers' StableDiffusionPipeline.__call__): the
sampler hooks the U-Net. Before each of the pipeline's U-Net calls it resets the per-entry
logits (logit_masks.py), runs K optimisation iterations (U-Net with gradients to the logits
only -> guided prediction -> x0-hat -> VAE decode -> reward -> AdamW step) and leaves the
final mask attached; the pipeline's own call then computes the model output with that mask
and the pipeline calls `scheduler.step` exactly once with it. The sampler never touches the
scheduler (x0-hat is computed from the noise schedule directly), so a multistep solver such
as DPM-Solver++ 2M keeps its history and stays second order (the public reference calls
`set_timesteps` every step, which silently makes it first order).

A step with K = 0 runs the plain U-Net: without optimisation a mask is only random drop.
Memory: each iteration's graph is freed by its backward; logits, noise and optimizer state
are replaced at the next step.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from maskunet.logit_masks import LogitMasks
from maskunet.schedules import parse_iteration_schedule
from maskunet.training import decode_to_unit


@dataclass
class TrainingFreeConfig:
    schedule: str | int = "reference"  # see schedules.parse_iteration_schedule
    lr: float = 1e-2
    weight_decay: float = 1e-2  # torch's AdamW default
    keep_probability: float = 0.934  # initial P(keep): the reference drops ~6.6%
    layers: str = "attn"
    seed: int = 0  # mask noise of step i comes from a generator seeded (seed, i)
    track_rewards: bool = True  # the reward after optimisation costs one more decode + reward per step


@dataclass
class StepRecord:
    step: int
    timestep: float
    iterations: int
    reward_before: float | None = None
    reward_after: float | None = None
    drop_fraction: dict[str, float] = field(default_factory=dict)
    flipped: int = 0  # mask entries the optimisation changed
    seconds: float = 0.0


@dataclass
class TrainingFreeOutput:
    images: object  # what the pipeline returned for output_type
    steps: list[StepRecord]
    seconds: float

    def report(self) -> dict:
        return {"seconds": self.seconds, "steps": [asdict(s) for s in self.steps]}


def alpha_bar(scheduler, timestep) -> float:
    """alpha-bar at a (possibly fractional) timestep, interpolated in sigma like Euler does."""
    ac = scheduler.alphas_cumprod.double().cpu().numpy()
    sigmas = np.sqrt((1.0 - ac) / ac)
    sigma = float(np.interp(float(timestep), np.arange(len(ac)), sigmas))
    return 1.0 / (1.0 + sigma * sigma)


def predict_x0(scheduler, model_input: torch.Tensor, prediction: torch.Tensor, timestep) -> torch.Tensor:
    """x0-hat from the U-Net's (variance-preserving) input and its guided prediction.

    The schedulers scale their latents so that the U-Net input is sqrt(a) x0 + sqrt(1-a) eps
    for all of DDIM, DPM-Solver++ and Euler, so this needs no scheduler state.
    """
    a = alpha_bar(scheduler, timestep)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (model_input - (1 - a) ** 0.5 * prediction) / a**0.5
    if kind == "v_prediction":
        return a**0.5 * model_input - (1 - a) ** 0.5 * prediction
    if kind == "sample":
        return prediction
    raise ValueError(f"unsupported prediction_type {kind!r}")


class TrainingFreeSampler:
    """Wraps a (MaskUNet)StableDiffusionPipeline; call it like the pipeline.

    `reward(images, prompts) -> (B,)` scores images in [0, 1] (B, 3, H, W); higher is better.
    """

    def __init__(self, pipe, reward, config: TrainingFreeConfig | None = None, on_masks=None):
        self.pipe, self.reward, self.config = pipe, reward, config or TrainingFreeConfig()
        # on_masks(record, masks: LogitMasks) after each step's optimisation (tests, inspection).
        self.on_masks = on_masks
        self._inner = False  # True while the sampler itself calls the U-Net

    def __call__(self, prompt: str | list[str], num_inference_steps: int = 15, num_images_per_prompt: int = 1,
                 **pipe_kwargs) -> TrainingFreeOutput:
        if prompt is None:
            raise ValueError("training-free sampling needs the prompt text (the rewards read it), not prompt_embeds")
        if pipe_kwargs.get("guidance_rescale", 0.0):
            raise ValueError("training-free sampling does not support guidance_rescale (x0-hat would not match)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self._prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        self._schedule = parse_iteration_schedule(self.config.schedule, num_inference_steps)
        self._records: list[StepRecord] = []
        unet = self.pipe.unet
        self._masks = LogitMasks(unet, self.config.layers)
        hooks = [unet.register_forward_pre_hook(self._before_unet, with_kwargs=True),
                 unet.register_forward_hook(self._after_unet, with_kwargs=True)]
        frozen = [p for m in (unet, self.pipe.vae, self.pipe.text_encoder) for p in m.parameters() if p.requires_grad]
        for p in frozen:  # gradients reach the logits only
            p.requires_grad_(False)
        # A pipeline's trained masks stay out of the way: their block hooks would otherwise set
        # (or, switched off, clear) every masked layer's mask before each block runs.
        masked_unet = getattr(self.pipe, "masked_unet", None)
        start = time.perf_counter()
        try:
            with masked_unet.paused() if masked_unet is not None else contextlib.nullcontext():
                out = self.pipe(prompt, num_inference_steps=num_inference_steps,
                                num_images_per_prompt=num_images_per_prompt, **pipe_kwargs)
        finally:
            for hook in hooks:
                hook.remove()
            self._masks.remove()
            for p in frozen:
                p.requires_grad_(True)
        return TrainingFreeOutput(out.images, self._records, time.perf_counter() - start)

    # ---- U-Net hooks -------------------------------------------------------------------
    def _before_unet(self, unet, args, kwargs):
        if self._inner:
            return None
        step = len(self._records)
        if step >= len(self._schedule):
            raise RuntimeError(f"the pipeline called the U-Net more than {len(self._schedule)} times")
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        record = StepRecord(step, float(timestep), self._schedule[step])
        self._records.append(record)
        self._step_start = time.perf_counter()
        if record.iterations > 0:
            self._optimise(unet, args, kwargs, record)
        return None

    def _after_unet(self, unet, args, kwargs, output):
        if self._inner:
            return None
        record = self._records[-1]
        if self.config.track_rewards:
            with torch.no_grad():
                prediction = output[0] if isinstance(output, tuple) else output.sample
                record.reward_after = self._reward_of(args, kwargs, prediction).mean().item()
            if record.iterations == 0:
                record.reward_before = record.reward_after
        self._masks.detach()
        record.seconds = time.perf_counter() - self._step_start
        return None

    # ---- the per-step optimisation -------------------------------------------------------
    def _optimise(self, unet, args, kwargs, record: StepRecord) -> None:
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + record.step)
        params = self._masks.reset(cfg.keep_probability, generator)
        initial = self._masks.hard_masks()
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self._masks.attach()
        with torch.enable_grad():
            for iteration in range(record.iterations):
                reward = self._reward_of(args, kwargs, self._unet_call(unet, args, kwargs)).mean()
                if iteration == 0:
                    record.reward_before = reward.item()
                optimizer.zero_grad(set_to_none=True)
                (-reward).backward()
                optimizer.step()
                del reward  # the graph is already freed by backward
        record.drop_fraction = self._masks.drop_fractions()
        record.flipped = sum(int((initial[n] != m).sum()) for n, m in self._masks.hard_masks().items())
        del initial
        if self.on_masks is not None:
            self.on_masks(record, self._masks)
        # The final mask stays attached for the pipeline's own U-Net call.

    def _unet_call(self, unet, args, kwargs) -> torch.Tensor:
        self._inner = True
        try:
            out = unet(*args, **kwargs)
        finally:
            self._inner = False
        return out[0] if isinstance(out, tuple) else out.sample

    def _reward_of(self, args, kwargs, prediction: torch.Tensor) -> torch.Tensor:
        """Per-image reward of the x0-hat that this (CFG-batched) U-Net output implies."""
        pipe = self.pipe
        model_input, timestep = args[0], (args[1] if len(args) > 1 else kwargs["timestep"])
        if pipe.do_classifier_free_guidance:
            uncond, text = prediction.chunk(2)
            prediction = uncond + pipe.guidance_scale * (text - uncond)
            model_input = model_input.chunk(2)[0]
        x0 = predict_x0(pipe.scheduler, model_input.float(), prediction.float(), timestep)
        return self.reward(decode_to_unit(pipe.vae, x0), self._prompts)
