import torch
from diffusers import UNet2DConditionModel

from maskunet import MaskConfig, MaskGenerator
from maskunet.layers import select_layers
from maskunet.sd15 import SD15_UNET_CONFIG


def test_default_selection_on_the_sd15_unet_is_72_layers_and_49m_entries():
    with torch.device("meta"):  # the real architecture, no weights, no download
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    layers = [m for group in select_layers(unet, "attn").values() for _, m in group]
    assert len(layers) == 72
    assert sum(m.weight.numel() for m in layers) == 49_029_120
    assert sorted(select_layers(unet, "attn")) == [1, 2, 3]  # no generator for the attention-free block 0
    with torch.device("meta"):
        gen = MaskGenerator.from_unet(unet, MaskConfig())
    shapes = {b["index"]: (b["in_channels"], b["out_channels"], b["temb_dim"]) for b in gen.config.blocks}
    assert shapes == {1: (2560, 1280, 1280), 2: (1920, 640, 1280), 3: (960, 320, 1280)}
