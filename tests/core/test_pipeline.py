import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline
from PIL import Image

from maskunet import MaskConfig, MaskGenerator, MaskUNetPipeline
from maskunet.tiny import CAPTION_WORDS
from maskunet_platform.cli import main as cli


@pytest.fixture(scope="module")
def nontrivial_masks(tiny_base, tmp_path_factory):
    """A generator whose masks drop ~half of the entries, saved like a trained one."""
    unet = StableDiffusionPipeline.from_pretrained(tiny_base).unet
    torch.manual_seed(0)
    gen = MaskGenerator.from_unet(unet, MaskConfig())
    for name, p in gen.named_parameters():
        if name.endswith("b_out"):
            p.data.fill_(0.0)
    out = tmp_path_factory.mktemp("masks")
    gen.save_pretrained(out)
    return out


def run(pipe, prompt, seed, **kw):
    images = pipe(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(seed), **kw).images
    return np.stack([np.asarray(im) for im in images])


def test_tiny_base_loads_through_the_standard_sd_path(tiny_base):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    assert len(pipe.unet.up_blocks) == 3 and sum("CrossAttn" in t for t in pipe.unet.config.up_block_types) >= 2
    ids = pipe.tokenizer("a red circle", padding="max_length").input_ids
    assert len(ids) == 77 and ids[:5] == [pipe.tokenizer.bos_token_id, *ids[1:4], pipe.tokenizer.eos_token_id]
    split = [w for w in CAPTION_WORDS if len(pipe.tokenizer(w, add_special_tokens=False).input_ids) != 1]
    assert split == []  # every caption word is one whole-word token


def test_pipeline_sizes_seeds_and_mask_switch(tiny_base, nontrivial_masks):
    pipe = MaskUNetPipeline.from_base(tiny_base, masks=nontrivial_masks)
    pipe.masked_unet.track_drop_probability = True
    a = run(pipe, ["a red circle", "a blue square"], seed=3, height=64, width=64)
    assert a.shape == (2, 64, 64, 3)
    assert np.array_equal(a, run(pipe, ["a red circle", "a blue square"], seed=3, height=64, width=64))
    stats = pipe.masked_unet.mask_stats(per_sample=True)
    assert stats["rho"] > 0.1
    # 2 prompts x 2 guidance branches: every sample gets its own mask
    first = next(iter(stats["layers"].values()))
    assert len(first["per_sample_drop_fraction"]) == 4
    pipe.masks_enabled = False
    off = run(pipe, ["a red circle", "a blue square"], seed=3, height=64, width=64)
    assert not np.array_equal(a, off)
    plain = MaskUNetPipeline.from_base(tiny_base)
    assert np.array_equal(off, run(plain, ["a red circle", "a blue square"], seed=3, height=64, width=64))
    assert run(pipe, "a red circle", seed=3, height=32, width=32).shape == (1, 32, 32, 3)


def test_cli_init_base_and_generate(tmp_path, nontrivial_masks):
    runner = CliRunner()
    base = tmp_path / "base"
    result = runner.invoke(cli, ["init-base", "--out", str(base), "--seed", "1"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(cli, ["init-base", "--out", str(base)])
    assert again.exit_code == 2 and "the folder is not empty" in again.output
    out = tmp_path / "img.png"
    result = runner.invoke(
        cli, ["generate", "a green star", "--base", str(base), "--masks", str(nontrivial_masks),
              "--steps", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "masks on" in result.output and Image.open(out).size == (64, 64)
    missing = runner.invoke(cli, ["generate", "x", "--base", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code != 0 and "cannot load base" in missing.output


def test_an_fp16_base_folder_loads_in_one_dtype(tmp_path, tiny_base, nontrivial_masks):
    """transformers keeps a checkpoint's stored dtype, diffusers loads fp32: from_base must
    load every component in one dtype, or a fp16 folder cannot generate."""
    import torch

    MaskUNetPipeline.from_base(tiny_base).to(torch.float16).save_pretrained(tmp_path / "fp16")
    pipe = MaskUNetPipeline.from_base(tmp_path / "fp16", masks=nontrivial_masks)
    assert {pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.float32}
    assert run(pipe, "a red circle", seed=0, height=32, width=32).shape == (1, 32, 32, 3)


def test_an_earlier_shipped_shapes_base_is_upgraded_and_a_users_folder_is_not(tmp_path, monkeypatch):
    import shutil

    from maskunet import tiny

    weights = tiny._UNET_WEIGHTS
    stale, mine = tmp_path / "stale", tmp_path / "mine"
    for folder, content in ((stale, b"an earlier release"), (mine, b"the user's own weights")):
        shutil.copytree(tiny.SHAPES_BASE_ASSET, folder)
        (folder / weights).write_bytes(content)
    monkeypatch.setattr(tiny, "_EARLIER_SHAPES_BASES", {tiny._unet_digest(stale)})
    tiny.ensure_tiny_base(stale, pretrained=True)
    tiny.ensure_tiny_base(mine, pretrained=True)
    assert tiny._unet_digest(stale) == tiny._unet_digest(tiny.SHAPES_BASE_ASSET)
    assert (mine / weights).read_bytes() == b"the user's own weights"
    assert not (tmp_path / "stale.stale").exists()
