"""mask.text_conditioning: each block's mask code also sees the mean text-encoder state."""
import json

import pytest
import torch

from maskunet import MaskConfig, MaskedUNet, MaskGenerator
from maskunet.training import diffusion_loss

from .conftest import make_masked, make_unet, random_inputs

TEXT = MaskConfig(text=True)


def test_all_ones_masks_reproduce_the_base_unet():
    masked, base = make_masked(mask_config=TEXT)
    masked.eval()
    x, t, c = random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(masked(x, t, c).sample, base(x, t, c).sample, atol=1e-5, rtol=1e-5)
    assert all(block.text_proj is not None for block in masked.generator.codes.values())


@pytest.mark.parametrize("path", ["block", "layer"])
def test_every_parameter_text_projection_included_gets_a_gradient_at_step_0(ddpm, path):
    masked, _ = make_masked(mask_config=TEXT)
    masked.mask_path = path
    masked.train()
    x, t, c = random_inputs(batch=4)
    diffusion_loss(masked, ddpm, x, c, torch.randn_like(x), t).mean().backward()
    trainable = [(n, p) for n, p in masked.named_parameters() if p.requires_grad]
    assert any("text_proj" in n for n, _ in trainable)
    assert [n for n, p in trainable if p.grad is None or not p.grad.abs().gt(0).any()] == []


def test_the_text_changes_the_code_directly():
    """Same image features and time embedding, other text: another code (the paper's generator
    sees the text only through the hidden states)."""
    unet = make_unet()
    c = random_inputs(batch=2)[2]
    for cfg, differs in ((TEXT, True), (MaskConfig(), False)):
        generator = MaskGenerator.from_unet(unet, cfg)
        index = next(iter(generator.codes))
        block = generator.codes[index]
        channels = block.time_proj.out_features  # GAP(concat(h, s)): split between h and s
        hidden, skip = torch.randn(2, channels // 2, 4, 4), torch.randn(2, channels - channels // 2, 4, 4)
        temb = torch.randn(2, block.time_proj.in_features)
        a = generator.block_code(int(index), hidden, skip, temb, c)
        b = generator.block_code(int(index), hidden, skip, temb, torch.randn_like(c))
        assert (not torch.equal(a, b)) == differs


def test_a_text_conditioned_export_round_trips_and_older_exports_load_unconditioned(tmp_path):
    masked, _ = make_masked(mask_config=TEXT)
    for p in masked.generator.parameters():
        p.data.add_(torch.randn_like(p) * 0.5)  # non-trivial masks
    masked.generator.save_pretrained(tmp_path / "gen")
    loaded = MaskGenerator.from_pretrained(tmp_path / "gen")
    assert loaded.config.text and loaded.mask_config.text
    other = MaskedUNet(make_unet(0), loaded).eval()
    masked.eval()
    x, t, c = random_inputs()
    with torch.no_grad():
        assert torch.equal(masked(x, t, c).sample, other(x, t, c).sample)
    plain, _ = make_masked()
    plain.generator.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config.pop("text")  # as written before the option existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = MaskGenerator.from_pretrained(tmp_path / "old")
    assert old.config.text is False and MaskedUNet(make_unet(0), old) is not None
