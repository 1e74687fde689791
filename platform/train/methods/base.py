"""The `Trainee` surface and the per-method builders (masks, lora, full)."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from maskunet.baselines import EXPORT_FOLDERS as EXPORT_NAMES  # <export_dir>/<run>/<name> per method
from maskunet_platform.config import JobConfig


@dataclass
class Trainee:
    """`model` is what the engine wraps and the step calls as model(sample, t, states);
    `owner` holds the trained parameters (those with requires_grad), under the names its
    export and reload use; `masked` is the MaskedUNet for the masks method (else None)."""

    method: str
    model: nn.Module
    owner: nn.Module
    masked: Optional[nn.Module] = None
    extra_metrics: dict = field(default_factory=dict)

    def trained_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.owner.named_parameters() if p.requires_grad]

    @property
    def trainable_count(self) -> int:
        # ZeRO-3 partitions parameters: ds_numel is the full size, numel() only the local part.
        return sum(getattr(p, "ds_numel", p.numel()) for _, p in self.trained_parameters())

    def export(self, state: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
        """Write `state` (fp32 trained parameters, gathered on rank 0) in the method's format."""
        from maskunet import baselines

        if self.method == "masks":
            from maskunet_platform.train.checkpoint import export_generator

            return export_generator(self.owner, state, out_dir)
        if self.method == "lora":
            return baselines.save_lora(self.owner, baselines.peft_state(self.owner, state), out_dir)
        return baselines.save_unet(self.owner, state, out_dir)

    def load_weights(self, folder: str | Path) -> None:
        """Copy exported weights into the live trained parameters (resume without optimizer state)."""
        from maskunet import baselines

        if self.method == "lora":
            baselines.load_lora_into(self.owner, folder)
            return
        if self.method == "masks":
            from maskunet import MaskGenerator

            loaded = dict(MaskGenerator.from_pretrained(str(folder)).named_parameters())
        else:
            from diffusers import UNet2DConditionModel

            loaded = dict(UNet2DConditionModel.from_pretrained(str(folder), use_safetensors=True).named_parameters())
        with torch.no_grad():
            for name, param in self.trained_parameters():
                param.copy_(loaded[name].to(param.dtype))

    def penalty(self, job: JobConfig) -> Optional[torch.Tensor]:
        """The masks' optional target-sparsity term (None for the baselines or when unweighted)."""
        if self.masked is None or not self.masked.track_drop_probability:
            return None
        from maskunet import sparsity_penalty

        return sparsity_penalty(self.masked.expected_sparsity(), job.mask.target_sparsity, job.mask.sparsity_weight)


def build_trainee(job: JobConfig, unet: nn.Module, device: torch.device) -> Trainee:
    """Attach the method to the frozen base U-Net (seeded identically on every rank)."""
    torch.manual_seed(job.train.seed)
    method = job.train.method
    if method == "masks":
        from maskunet import MaskedUNet, MaskGenerator
        from maskunet_platform.train.loop import mask_config

        generator = MaskGenerator.from_unet(unet, mask_config(job)).to(device)
        masked = MaskedUNet(unet, generator).train()
        masked.track_drop_probability = job.mask.sparsity_weight > 0
        return Trainee(method, masked, generator, masked)
    from maskunet import baselines

    if method == "lora":
        lora = job.train.lora
        targets = baselines.add_lora(unet, lora.layers or job.mask.layers, lora.rank, lora.alpha, lora.dropout)
        unet.to(device).train()
        return Trainee(method, unet, unet, extra_metrics={"train/lora_layers": float(len(targets))})
    baselines.enable_full_training(unet)
    unet.to(device).train()
    return Trainee(method, unet, unet)


def paired_switch(method: str, unet: nn.Module, folder: str | Path) -> nn.Module:
    """A module over the base `unet` with the exported weights in `folder` that runs tuned
    while `.masks_enabled` and as the plain base otherwise (paired evaluation)."""
    from maskunet import baselines

    if method == "masks":
        from maskunet import MaskedUNet, MaskGenerator

        generator = MaskGenerator.from_pretrained(str(folder)).to(unet.device).eval()
        return MaskedUNet(unet, generator)  # generator stays fp32
    if method == "lora":
        lora = _LoraModule(unet)
        unet.load_lora_adapter(str(folder), prefix="unet", adapter_name=baselines.ADAPTER,
                               weight_name=baselines.LORA_FILE)
        return lora
    from diffusers import UNet2DConditionModel

    tuned = UNet2DConditionModel.from_pretrained(str(folder), use_safetensors=True, dtype=unet.dtype)
    return baselines.UNetSwitch(tuned.to(unet.device).eval(), unet)


class _LoraModule(nn.Module):
    """The LoRA-adapted U-Net with the adapter switch as `masks_enabled`."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        from maskunet.baselines import LoraSwitch

        self.unet, self._switch = unet, LoraSwitch(unet)

    @property
    def masks_enabled(self) -> bool:
        return self._switch.masks_enabled

    @masks_enabled.setter
    def masks_enabled(self, enabled: bool) -> None:
        self._switch.masks_enabled = enabled

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)

    def unwrap(self) -> nn.Module:
        self.unet.delete_adapters(self._switch_name())
        return self.unet

    @staticmethod
    def _switch_name() -> str:
        from maskunet.baselines import ADAPTER

        return ADAPTER
