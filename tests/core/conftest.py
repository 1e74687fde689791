import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from maskunet import MaskConfig, MaskedUNet, MaskGenerator
from maskunet.tiny import SD_SCHEDULE, TINY_UNET


def make_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY_UNET, **overrides}).eval()


def make_masked(seed: int = 0, mask_config: MaskConfig | None = None) -> tuple[MaskedUNet, UNet2DConditionModel]:
    """A masked tiny U-Net plus an independent, identical plain copy to compare against."""
    base = make_unet(seed)
    unet = make_unet(seed)
    torch.manual_seed(seed + 1)
    return MaskedUNet(unet, MaskGenerator.from_unet(unet, mask_config)), base


def random_inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, 77, TINY_UNET["cross_attention_dim"], generator=g)
    return sample, timesteps, text


@pytest.fixture
def ddpm() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=SD_SCHEDULE["beta_start"], beta_end=SD_SCHEDULE["beta_end"],
        beta_schedule="scaled_linear", prediction_type="epsilon",
    )
