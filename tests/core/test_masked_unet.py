import pytest
import torch

from maskunet import MaskConfig, MaskedUNet, MaskGenerator, sparsity_penalty
from maskunet.layers import MaskedLinear
from maskunet.training import diffusion_loss

from .conftest import make_masked, make_unet, random_inputs


def test_identity_at_init_masks_on():
    masked, base = make_masked()
    masked.eval()
    masked.track_drop_probability = True
    x, t, c = random_inputs()
    with torch.no_grad():
        out, ref = masked(x, t, c).sample, base(x, t, c).sample
    # Same weights, all-ones masks; bmm vs. addmm may reassociate sums: tolerance 1e-5.
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    stats = masked.mask_stats()
    assert len(stats["layers"]) == 32 and all(l["drop_fraction"] == 0.0 for l in stats["layers"].values())
    assert 0 < stats["rho"] < 0.01  # logits start at +5: drop probability sigmoid(-5) ~= 0.0067


def test_masks_off_is_exactly_the_base_unet():
    masked, base = make_masked()
    for _, layer in masked.masked_layers():
        layer.weight.data.zero_()  # would change the output if masks were applied
        break
    base_first = next(m for n, m in base.named_modules() if n == masked.masked_layers()[0][0])
    base_first.weight.data.zero_()
    masked.masks_enabled = False
    x, t, c = random_inputs()
    with torch.no_grad():
        assert torch.equal(masked(x, t, c).sample, base(x, t, c).sample)
    assert all(layer.mask is None for _, layer in masked.masked_layers())


def test_every_trainable_parameter_gets_a_gradient_at_step_0(ddpm):
    masked, _ = make_masked()
    masked.train()
    x, t, c = random_inputs(batch=4)
    loss = diffusion_loss(masked, ddpm, x, c, torch.randn_like(x), t).mean()
    loss.backward()
    trainable = [(n, p) for n, p in masked.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("generator.") for n, _ in trainable)
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().gt(0).any()]
    assert no_grad == []
    assert all(p.grad is None for p in masked.unet.parameters())


def test_masks_vary_with_timestep_and_sample_after_training(ddpm):
    masked, _ = make_masked(mask_config=MaskConfig(tau=0.5))
    opt = torch.optim.AdamW(masked.generator.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    latents, _, text = random_inputs(batch=4, seed=1)
    masked.train()
    masked.track_drop_probability = masked.keep_last_masks = True
    for _ in range(30):
        t = torch.randint(0, 1000, (4,), generator=g)
        loss = diffusion_loss(masked, ddpm, latents, text, torch.randn(latents.shape, generator=g), t).mean()
        loss = loss + sparsity_penalty(masked.expected_sparsity(), target=0.3, weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    masked.eval()
    x = latents[:2]
    with torch.no_grad():
        masked(x, torch.tensor([50, 50]), text[:2])
        by_sample = masked.last_masks()
        masked(x, torch.tensor([950, 950]), text[:2])
        late = masked.last_masks()
    assert masked.mask_stats()["rho"] > 0.05  # the masks really drop weights now
    assert any(not torch.equal(m[0], m[1]) for m in by_sample.values()), "masks identical across samples"
    assert any(not torch.equal(by_sample[k][0], late[k][0]) for k in late), "masks identical across timesteps"


def test_gradient_checkpointing_keeps_masks_in_the_recompute(ddpm):
    grads = []
    for checkpointing in (False, True):
        masked, _ = make_masked()
        masked.stochastic = False  # same masks in both runs
        masked.train()
        if checkpointing:
            masked.unet.enable_gradient_checkpointing()
        for name, p in masked.generator.named_parameters():
            if name.endswith("b_out"):
                p.data.sub_(5.0)  # logits around 0: about half the entries masked
        x, t, c = random_inputs()
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        diffusion_loss(masked, ddpm, x, c, noise, t).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in masked.generator.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_no_grad(dtype):
    masked, base = make_masked()
    masked.eval()
    x, t, c = random_inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = masked(x, t, c).sample
        ref = base(x, t, c).sample
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("selection", ["linear", "attn+conv"])
def test_other_layer_selections_mask_per_sample(selection, ddpm):
    masked, base = make_masked(mask_config=MaskConfig(layers=selection))
    names = [n for n, _ in masked.masked_layers()]
    assert any(".ff." in n for n in names) if selection == "linear" else any("conv" in n for n in names)
    masked.eval()
    masked.keep_last_masks = True
    x, t, c = random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(masked(x, t, c).sample, base(x, t, c).sample, atol=1e-5, rtol=1e-5)
    masked.train()
    diffusion_loss(masked, ddpm, x, c, torch.randn_like(x), t).mean().backward()
    assert all(p.grad is not None and p.grad.abs().gt(0).any() for p in masked.generator.parameters())
    conv = [(n, m) for n, m in masked.masked_layers() if m.weight.dim() == 4]
    if conv:  # one mask entry per (out, in) kernel, one mask per sample
        name, layer = conv[-1]
        assert masked.last_masks()[name].shape == (3, *layer.weight.shape[:2])


def test_per_sample_masks_apply_to_their_own_sample():
    masked, _ = make_masked()
    masked.eval()
    x, t, c = random_inputs(batch=2)
    with torch.no_grad():
        full = masked(x, t, c).sample
        single = masked(x[1:], t[1:], c[1:]).sample
    torch.testing.assert_close(full[1:], single, atol=1e-5, rtol=1e-5)
    layer = masked.masked_layers()[0][1]
    assert isinstance(layer, MaskedLinear) and isinstance(layer, torch.nn.Linear)


def test_save_and_load_reproduce_outputs_bit_for_bit(tmp_path):
    masked, _ = make_masked()
    for p in masked.generator.parameters():
        p.data.add_(torch.randn_like(p) * 0.5)  # non-trivial masks
    masked.generator.save_pretrained(tmp_path / "gen")
    assert (tmp_path / "gen" / "config.json").exists()
    assert list((tmp_path / "gen").glob("*.safetensors"))
    loaded = MaskGenerator.from_pretrained(tmp_path / "gen")
    other = MaskedUNet(make_unet(0), loaded).eval()
    masked.eval()
    masked.track_drop_probability = True
    x, t, c = random_inputs()
    with torch.no_grad():
        a, b = masked(x, t, c).sample, other(x, t, c).sample
    assert masked.mask_stats()["rho"] > 0.01
    assert torch.equal(a, b)


def test_loading_onto_a_mismatched_unet_fails_clearly(tmp_path):
    masked, _ = make_masked()
    masked.generator.save_pretrained(tmp_path / "gen")
    loaded = MaskGenerator.from_pretrained(tmp_path / "gen")
    wider = make_unet(0, block_out_channels=(32, 64, 96))
    with pytest.raises(ValueError, match=r"does not fit this U-Net: up_blocks\.\d in_channels"):
        MaskedUNet(wider, loaded)
    with pytest.raises(ValueError, match="already has a mask generator"):
        MaskedUNet(masked.unet, loaded)
    plain = masked.unwrap()
    assert not any(isinstance(m, MaskedLinear) for m in plain.modules())
    MaskedUNet(plain, loaded)  # re-attaching after unwrap works
