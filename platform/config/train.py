"""`train` section: Ray Train workers, DeepSpeed ZeRO, optimisation, checkpoints, eval and samples."""
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from maskunet_platform.config.base import Section


Method = Literal["masks", "lora", "full"]
Objective = Literal["denoise", "reward", "both"]


class DeepSpeedSection(Section):
    # enabled=False trains with plain torch DDP (the parity baseline for ZeRO).
    enabled: bool = True
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: Literal["none", "cpu"] = "none"
    offload_param: Literal["none", "cpu"] = "none"  # ZeRO-3 only
    gradient_accumulation_steps: int = Field(1, ge=1)
    # Always explicit: DeepSpeed 0.19 silently defaults to 1.0. 0 = no clipping.
    gradient_clipping: float = Field(1.0, ge=0)
    # Raw DeepSpeed config keys merged last, for settings not modelled here.
    extra: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _offload_param_needs_zero3(self):
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError("offload_param requires zero_stage 3")
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("offload_optimizer requires zero_stage >= 1")
        for mode in ("bf16", "fp16", "torch_autocast"):
            if isinstance(self.extra.get(mode), dict) and self.extra[mode].get("enabled"):
                # DeepSpeed's modes cast or autocast the mask generator too; it must stay fp32.
                raise ValueError(f"extra.{mode} must not be enabled: set train.precision instead")
        return self


class LossScalingSection(Section):
    # fp16 only: dynamic loss scale for the gradients through the fp16 U-Net (the generator is fp32).
    initial_scale_power: int = Field(16, ge=0, le=32, description="initial scale 2**power")
    growth_interval: int = Field(1000, ge=1, description="applied steps in a row before the scale doubles")
    min_scale: float = Field(1.0, gt=0)


class ShapesBenchSection(Section):
    # The shapes benchmark (`maskunet bench shapes --compare`) after training, for bases that
    # draw the shapes world (the pretrained shapes base); 0 prompts = off.
    prompts: int = Field(0, ge=0, le=700, description="held-out shapes prompts; 0 = off")
    seeds: int = Field(1, ge=1)
    steps: int = Field(20, ge=1)
    guidance: float = Field(7.5, ge=0)
    batch_size: int = Field(16, ge=1)


class EvalSection(Section):
    # Paired held-out evaluation: same images, noise and timesteps for base and masked.
    rows: int = Field(32, ge=1, description="rows of the held-out split (data.holdout_fraction) evaluated")
    batch_size: int = Field(8, ge=1)
    seed: int = 1234
    timestep_buckets: int = Field(4, ge=1)
    shapes: ShapesBenchSection = Field(default_factory=ShapesBenchSection)


class SamplesSection(Section):
    # Sample grid PNG: base vs masked with the same prompts and seeds.
    prompts: list[str] = Field(default_factory=lambda: ["a red circle on a blue background",
                                                         "a photo of a yellow star"])
    num_inference_steps: int = Field(10, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    seed: int = 0
    resolution: Optional[int] = Field(None, ge=8, description="default: data.resolution")


class LoraSection(Section):
    # train.method lora: PEFT LoRA on the U-Net (zero-initialised up-projection: step 0 = the base).
    rank: int = Field(4, ge=1)
    alpha: Optional[float] = Field(None, gt=0, description="LoRA alpha; default: rank (scale 1)")
    dropout: float = Field(0.0, ge=0, lt=1)
    layers: Optional[str] = Field(None, description="layer selection, mask.layers syntax; default: mask.layers "
                                                    "(the decoder attention projections the masks cover)")


class RewardSection(Section):
    # train.objective reward | both: images sampled with the trained model are scored by
    # rewards and the loss -reward is back-propagated through K sampling steps (truncated
    # back-propagation, maskunet/reward_training.py).
    rewards: list[str] = Field(default_factory=lambda: ["shapes"],
                               description="NAME[=PATH][:WEIGHT] terms of the training-free reward registry")
    weight: float = Field(1.0, gt=0, description="of the reward loss (beside the denoising loss: objective both)")
    # Training captions of the shapes world; the shapes benchmark's captions are never drawn.
    prompts: Literal["shapes"] = "shapes"
    batch_size: int = Field(2, ge=1, description="prompts sampled per worker per step")
    steps: int = Field(10, ge=1, description="DDIM steps of each sampled image")
    backprop_steps: int = Field(1, ge=1, description="K sampling steps keep a graph (memory ~ K)")
    # Where those K steps lie: the schedule's end (DRaFT-K: the final image is scored), or from
    # a random step (x0 predicted there is scored): only the latter trains the early steps'
    # masks, where composition is decided.
    truncation: Literal["last", "random"] = "random"
    guidance: float = Field(7.5, ge=0, description="classifier-free guidance while sampling; <= 1: none")

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, rewards: list[str]) -> list[str]:
        from maskunet.reward_spec import parse_reward_spec

        if not rewards:
            raise ValueError("name at least one reward (e.g. shapes)")
        for text in rewards:
            parse_reward_spec(text)  # ValueError naming an unknown reward or a bad weight
        return rewards

    @model_validator(mode="after")
    def _truncation_fits(self):
        if self.backprop_steps > self.steps:
            raise ValueError(f"backprop_steps ({self.backprop_steps}) must be <= steps ({self.steps})")
        return self


class TrainSection(Section):
    # What trains: the mask generator (the method), a LoRA on the U-Net, or the whole U-Net
    # (the paper's baselines), with the same data, engine, checkpoints, eval and registry.
    method: Method = "masks"
    lora: LoraSection = Field(default_factory=LoraSection)
    # What it trains on: the denoising loss on data rows, sampled images' rewards, or their sum.
    objective: Objective = "denoise"
    reward: RewardSection = Field(default_factory=RewardSection)
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPU, gloo on CPU
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    steps: int = Field(40, ge=1, description="optimizer steps")
    # The micro-batch per worker is data.batch_size.
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    seed: int = 0
    log_every: int = Field(5, ge=1)
    timestep_buckets: int = Field(4, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    checkpoints_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=-1, description="-1 = retry forever")
    # Ray Train RunConfig(storage_path, name): local dir or s3://bucket/prefix. Re-running
    # with the same run_name resumes from its latest checkpoint.
    storage_path: str = "~/.cache/maskunet/runs"
    run_name: Optional[str] = Field(None, description="default: job name")
    # Local folder the final consolidated mask generator is exported to (<export_dir>/<run name>/generator).
    export_dir: str = "~/.cache/maskunet/exports"
    gradient_checkpointing: bool = False
    loss_scaling: LossScalingSection = Field(default_factory=LossScalingSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    samples: SamplesSection = Field(default_factory=SamplesSection)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict) and "compile" in data:
            raise ValueError("train.compile moved to model.compile (auto | on | off)")
        return data

    @model_validator(mode="after")
    def _check_combinations(self):
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs use_gpu: true (CPU kernels lack fp16)")
        if not self.deepspeed.enabled and self.precision != "fp32":
            raise ValueError("precision bf16/fp16 needs deepspeed.enabled (DDP path trains fp32)")
        if self.precision == "fp16" and self.deepspeed.zero_stage == 0:
            raise ValueError("precision fp16 needs deepspeed.zero_stage >= 1 "
                             "(its loss scale lives in the ZeRO optimizer)")
        if self.method == "full" and self.precision != "fp32":
            raise ValueError("method full trains the U-Net in fp32: set precision fp32")
        if self.backend == "nccl" and not self.use_gpu:
            raise ValueError("backend nccl needs use_gpu: true")
        return self
