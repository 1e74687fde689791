"""A run's export folder is the unit users pass around: every method's weights are found in it,
and weights that do not fit the base are refused (exit 2) naming what does not match."""
from pathlib import Path

import pytest

from maskunet.baselines import LORA_FILE, check_fits_base, find_weights


def test_find_weights_in_a_run_export_folder_or_the_weights_folder(lora_export, tmp_path):
    run = Path(lora_export)
    assert find_weights(run) == ("lora", run / "lora")
    assert find_weights(run / "lora") == ("lora", run / "lora")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="generator/, lora/, unet/"):
        find_weights(tmp_path / "empty")
    two = tmp_path / "two"
    (two / "lora").mkdir(parents=True)
    (two / "unet").mkdir()
    with pytest.raises(ValueError, match="several"):
        find_weights(two)


def test_exports_that_do_not_fit_the_base_name_the_mismatch(lora_export, tiny_base, shapes_base, tmp_path):
    from diffusers import UNet2DConditionModel

    from maskunet import MaskGenerator

    check_fits_base("lora", Path(lora_export) / "lora", Path(shapes_base) / "unet")  # its own base: fits
    from safetensors.torch import load_file, save_file

    (tmp_path / "bare-lora").mkdir()
    save_file(load_file(str(Path(lora_export) / "lora" / LORA_FILE)), str(tmp_path / "bare-lora" / LORA_FILE))
    with pytest.raises(ValueError, match="has no adapter config"):  # same tensors, no rank / alpha recorded
        check_fits_base("lora", tmp_path / "bare-lora", Path(shapes_base) / "unet")
    with pytest.raises(ValueError, match=r"does not fit the base U-Net .* features\) is \d+ in the export, \d+ in the base"):
        check_fits_base("lora", Path(lora_export) / "lora", Path(tiny_base) / "unet")
    UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet").save_pretrained(tmp_path / "unet")
    check_fits_base("full", tmp_path / "unet", Path(tiny_base) / "unet")
    with pytest.raises(ValueError, match="is not the base's architecture|does not fit the base U-Net"):
        check_fits_base("full", tmp_path / "unet", Path(shapes_base) / "unet")
    MaskGenerator.from_unet(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")).save_pretrained(
        tmp_path / "generator")
    check_fits_base("masks", tmp_path / "generator", Path(tiny_base) / "unet")
    with pytest.raises(ValueError, match=r"does not fit the base U-Net .*\((out features|fan-in)\) is \d+ in the export"):
        check_fits_base("masks", tmp_path / "generator", Path(shapes_base) / "unet")


def test_generate_takes_a_run_export_folder_and_refuses_another_architecture(lora_export, tiny_base, shapes_base,
                                                                            tmp_path):
    out = tmp_path / "lora.png"
    done = _maskunet("generate", "a red circle", "--base", shapes_base, "--weights", lora_export, "--steps", "2",
                     "--out", str(out))
    assert done.exit_code == 0 and out.stat().st_size > 100 and "lora on" in done.stdout, done.output
    wrong = _maskunet("generate", "a red circle", "--base", tiny_base, "--masks", lora_export, "--steps", "2",
                      "--out", str(tmp_path / "no.png"))
    assert wrong.exit_code == 2 and "does not fit the base U-Net" in wrong.output and "features" in wrong.output
    assert not (tmp_path / "no.png").exists()
    serve = _maskunet("serve", "--base", tiny_base, "--weights", lora_export, "--port", "1")
    assert serve.exit_code == 2 and "--weights" in serve.output and "does not fit" in serve.output, serve.output


def _maskunet(*args: str):
    from click.testing import CliRunner

    from maskunet_platform.cli import main

    return CliRunner().invoke(main, list(args))
