"""The shipped pretrained shapes base and `maskunet bench shapes` on it (real MLflow server)."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskunet_platform.cli import main

SIZE_LIMIT = 25 * 10**6


def test_init_base_pretrained_installs_a_small_safetensors_sd_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "base"
    result = CliRunner().invoke(main, ["init-base", "--pretrained", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"path": str(out), "pretrained": True}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= SIZE_LIMIT
    assert {p.suffix for p in files} <= {".json", ".txt", ".safetensors"}  # no pickle anywhere
    pipe = StableDiffusionPipeline.from_pretrained(out)  # the loading path of SD1.5 folders
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    again = CliRunner().invoke(main, ["init-base", "--pretrained", "--out", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output


def test_pretrained_base_draws_the_held_out_prompts(shapes_base, tiny_base):
    """Quality floor of the shipped base on held-out prompts, against random weights (the
    benchmark script measures every category on 200 pairs; see the README for what the
    base does not draw yet: most shapes)."""
    from maskunet import MaskUNetPipeline
    from maskunet_platform.bench.shapes.benchmark import ShapesBenchSettings, run_shapes_benchmark

    settings = ShapesBenchSettings(prompts=32, seeds=1, steps=20)
    reports = {}
    for name, folder in (("pretrained", shapes_base), ("random", tiny_base)):
        pipe = MaskUNetPipeline.from_base(folder)
        pipe.set_progress_bar_config(disable=True)
        reports[name] = run_shapes_benchmark(pipe, settings, compare=False)
    trained, random = reports["pretrained"], reports["random"]
    assert trained.results["base"]["background"]["mean"] >= 0.9, trained.results
    assert random.results["base"]["background"]["mean"] <= 0.3, random.results
    assert trained.kid["base"][0] < random.kid["base"][0] / 3, (trained.kid, random.kid)


@pytest.fixture(scope="module")
def all_ones_masks(shapes_base, tmp_path_factory) -> str:
    """A fresh mask generator: logits ~ +5 everywhere, so masks are all ones at inference."""
    from diffusers import UNet2DConditionModel

    from maskunet import MaskConfig, MaskGenerator

    unet = UNet2DConditionModel.from_pretrained(shapes_base, subfolder="unet")
    folder = tmp_path_factory.mktemp("masks")
    MaskGenerator.from_unet(unet, MaskConfig(layers="attn")).save_pretrained(folder)
    return str(folder)


def test_bench_shapes_compare_is_paired_and_logged(shapes_base, all_ones_masks, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    args = ["bench", "shapes", "--base", shapes_base, "--masks", all_ones_masks, "--prompts", "6", "--seeds", "2",
            "--steps", "4", "--compare", "--out", str(tmp_path / "bench"), "--tracking-uri",
            mlflow_server.tracking_uri, "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["items"] == 12 and set(report["results"]) == {"base", "masked"}
    # All-ones masks are the base U-Net: the same images, so every paired difference is 0.
    assert all(d["mean"] == 0 for d in report["difference"].values() if d["n"]), report["difference"]
    assert report["results"]["base"] == report["results"]["masked"]
    assert all(report["seconds_per_image"][m] > 0 for m in ("base", "masked"))  # the masks' time cost, shown
    # The trained-on reward beside the detector: same images, so the same reward, difference 0.
    assert report["shapes_reward"]["base"] == report["shapes_reward"]["masked"]
    assert report["shapes_reward_difference"]["mean"] == 0
    assert (tmp_path / "bench" / "grid.png").stat().st_size > 0
    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.metrics["shapes/items"] == 12 and "shapes/diff/colour" in run.data.metrics
    assert run.data.metrics["shapes/masked/s_per_image"] > 0
    assert {"shapes_grid.png", "shapes_report.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("extra, message", [
    (["--compare"], "--compare needs --weights, --model"),
    (["--prompts", "0"], "--prompts"),
    (["--model", "models:/nope@champion", "--masks", "."], "give one of them"),
])
def test_bench_shapes_invalid_input_is_one_line(shapes_base, extra, message):
    result = CliRunner().invoke(main, ["bench", "shapes", "--base", shapes_base, "--no-tracking", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
