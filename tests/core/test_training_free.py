"""Training-free MaskUNet: per-step logits optimised against a reward, solver state untouched."""
import gc
import weakref

import numpy as np
import pytest
import torch

from maskunet import MaskUNetPipeline
from maskunet.rewards import RewardUnavailable, build_reward, parse_reward_spec
from maskunet.schedules import make_scheduler, parse_iteration_schedule, reference_schedule
from maskunet.shapes_reward import ShapesReward, parse_caption
from maskunet.training_free import TrainingFreeConfig, TrainingFreeSampler

PROMPT = "a large red circle at the top left and a large blue square in the center on a white background"
# P(keep) so close to 1 that the fixed logistic noise (|eps| <= 13.8) never drops an entry and
# lr 1e-2 cannot move a logit (16.1) across the threshold: the masked U-Net is then the plain one.
ALL_KEPT = 1 - 1e-7


def load(base: str, scheduler: str) -> MaskUNetPipeline:
    pipe = MaskUNetPipeline.from_base(base)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe


def sample(pipe, config=None, steps=5, seed=0, prompt=PROMPT, **kw):
    """(images (B, H, W, 3) float, output or None): plain pipeline when config is None."""
    args = dict(num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(seed),
                output_type="np")
    if config is None:
        return pipe(prompt, **args).images, None
    out = TrainingFreeSampler(pipe, build_reward(["shapes"]), config, **kw)(prompt, **args)
    return out.images, out


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Models this small gain nothing from a second thread, and on a shared 2-core machine
    OpenMP barriers between two threads made each U-Net call up to 10x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes_pipe(shapes_base):
    return load(shapes_base, "dpm++2m")


@pytest.mark.parametrize("scheduler", ["dpm++2m", "ddim", "euler"])
def test_k0_at_every_step_is_byte_identical_to_the_plain_pipeline(tiny_base, scheduler):
    pipe = load(tiny_base, scheduler)
    plain, _ = sample(pipe)
    free, out = sample(pipe, TrainingFreeConfig(schedule=0))
    assert plain.dtype == free.dtype and np.array_equal(plain, free)
    assert [r.iterations for r in out.steps] == [0] * 5
    assert all(r.reward_before is not None for r in out.steps)  # x0-hat, decode, reward ran at every step


def test_dpm_solver_stays_second_order_while_optimising(tiny_base):
    """K = 2 per step with masks that keep everything: the whole optimisation path (grad
    forwards, decodes, backward, AdamW) runs, yet the image is the plain DPM-Solver++ 2M one,
    so nothing touched the solver's multistep state, and it reached second order."""
    pipe = load(tiny_base, "dpm++2m")
    plain, _ = sample(pipe)
    free, out = sample(pipe, TrainingFreeConfig(schedule=2, keep_probability=ALL_KEPT))
    assert np.array_equal(plain, free)
    assert pipe.scheduler.lower_order_nums == 2  # reset every step (the reference's bug) keeps it at 1
    assert [r.iterations for r in out.steps] == [2] * 5 and all(r.flipped == 0 for r in out.steps)


def shapes_reward_of(images: np.ndarray, prompt: str = PROMPT) -> float:
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return ShapesReward()(batch, [prompt] * len(batch)).mean().item()


def test_optimised_masks_raise_the_final_reward_and_change_between_steps(shapes_pipe):
    masks, grads = [], []

    def on_masks(record, logit_masks):
        masks.append({n: m.clone() for n, m in logit_masks.hard_masks().items()})
        grads.append(all(p.grad is not None and p.grad.abs().sum() > 0 for p in logit_masks.logits.values()))

    plain, _ = sample(shapes_pipe, TrainingFreeConfig(schedule=0), steps=6)
    free, out = sample(shapes_pipe, TrainingFreeConfig(schedule="1x2,3", lr=0.05), steps=6, on_masks=on_masks)
    assert shapes_reward_of(free) > shapes_reward_of(plain) + 0.02
    assert [r.iterations for r in out.steps] == [1, 1, 3, 3, 3, 3]
    assert all(r.flipped > 0 for r in out.steps)  # the optimisation changed the masks
    assert all(grads)  # every layer's logits got a gradient
    names = list(masks[0])
    assert len(names) == len(out.steps[0].drop_fraction) > 0
    for a, b in zip(masks, masks[1:]):  # a new mask at every timestep
        assert any(not torch.equal(a[n], b[n]) for n in names)
    drop = np.mean([np.mean(list(r.drop_fraction.values())) for r in out.steps])
    assert 0.03 < drop < 0.12  # initial keep probability 0.934: ~6.6% dropped


def test_base_weights_are_bit_for_bit_unchanged_and_get_no_gradient(shapes_pipe):
    modules = {"unet": shapes_pipe.unet, "vae": shapes_pipe.vae, "text_encoder": shapes_pipe.text_encoder}
    before = {k: {n: p.detach().clone() for n, p in m.state_dict().items()} for k, m in modules.items()}
    flags = {k: [p.requires_grad for p in m.parameters()] for k, m in modules.items()}
    sample(shapes_pipe, TrainingFreeConfig(schedule=2, lr=0.1), steps=2)
    for key, module in modules.items():
        after = module.state_dict()
        assert all(torch.equal(before[key][n], after[n]) for n in before[key]), key
        assert all(p.grad is None for p in module.parameters()), key
        assert [p.requires_grad for p in module.parameters()] == flags[key]  # restored
    # the U-Net is plain again: no masked layer class or mask left behind
    assert not any(type(m).__name__.startswith("Masked") for m in shapes_pipe.unet.modules())


class SavedTensorMeter:
    """Bytes of tensors autograd keeps for backward, live at once (peak over a run)."""

    def __init__(self):
        self.live = self.peak = 0

    def _free(self, n):
        self.live -= n

    def pack(self, tensor):
        box = [tensor]
        holder = _Holder(box)
        n = tensor.numel() * tensor.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._free, n)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.box[0]


class _Holder:
    def __init__(self, box):
        self.box = box


def test_memory_is_bounded_by_one_step_graph(shapes_pipe):
    peaks, stale = [], []
    for steps in (3, 9):
        meter, previous = SavedTensorMeter(), []

        def on_masks(record, logit_masks):
            gc.collect()
            stale.extend(ref for ref in previous if ref() is not None)  # an earlier step's logits still alive
            previous.clear()
            previous.extend(weakref.ref(p) for p in logit_masks.logits.values())

        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            sample(shapes_pipe, TrainingFreeConfig(schedule=1), steps=steps, on_masks=on_masks)
        peaks.append(meter.peak)
        assert meter.live == 0  # every graph freed
    assert peaks[0] > 0 and peaks[1] <= peaks[0] * 1.05, peaks
    assert stale == []


def test_iteration_schedules():
    assert reference_schedule(15) == [1] * 7 + [10] * 8
    assert parse_iteration_schedule("reference", 15) == reference_schedule(15)
    assert parse_iteration_schedule(3, 4) == [3, 3, 3, 3]
    assert parse_iteration_schedule("1x2,10", 5) == [1, 1, 10, 10, 10]
    assert parse_iteration_schedule("0,2x2", 3) == [0, 2, 2]
    for bad in ("x", "1x0", "-1", "2x9", "a,b"):
        with pytest.raises(ValueError):
            parse_iteration_schedule(bad, 5)


def test_reward_specs_and_missing_weights(monkeypatch):
    assert parse_reward_spec("shapes") == parse_reward_spec("shapes:1")
    spec = parse_reward_spec("clip=/m/clip:0.5")
    assert (spec.name, spec.path, spec.weight) == ("clip", "/m/clip", 0.5)
    with pytest.raises(ValueError, match="unknown reward 'fid'"):
        parse_reward_spec("fid:1")
    monkeypatch.delenv("MASKUNET_HPS_PATH", raising=False)
    with pytest.raises(RewardUnavailable, match="MASKUNET_HPS_PATH"):
        build_reward(["hps:5"])
    with pytest.raises(RewardUnavailable, match="open_clip|not found"):
        build_reward(["hps=/nonexistent/hps.safetensors:5"])
    with pytest.raises(RewardUnavailable, match="ImageReward|not found"):
        build_reward(["imagereward=/nonexistent/ir.safetensors"])
    with pytest.raises(RewardUnavailable, match="not a local transformers CLIP folder"):
        build_reward(["clip=/nonexistent"])


def test_shapes_reward_prefers_the_described_scene():
    from maskunet_platform.data.sample import Shape, draw_scene, scene_caption

    import maskunet.shapes_reward as sr

    right = [Shape("circle", "red", "large", 0, 0), Shape("square", "blue", "small", 1, 2)]
    caption = scene_caption(right, "white")
    assert parse_caption(caption) == ([sr.ShapeTarget("red", 0, 0), sr.ShapeTarget("blue", 1, 2)], "white")
    swapped = [Shape("circle", "blue", "large", 0, 0), Shape("square", "red", "small", 1, 2)]
    moved = [Shape("circle", "red", "large", 2, 2), Shape("square", "blue", "small", 1, 2)]
    scenes = [draw_scene(s, bg, 64) for s, bg in ((right, "white"), (swapped, "white"), (moved, "white"),
                                                      (right, "black"))]
    images = torch.stack([torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float() / 255 for im in scenes])
    images.requires_grad_(True)
    rewards = ShapesReward()(images, [caption] * 4)
    assert rewards[0] > rewards[1] and rewards[0] > rewards[2] and rewards[0] > rewards[3]
    rewards.sum().backward()
    assert images.grad.abs().sum() > 0


def test_cli_generate_training_free_writes_the_report(shapes_base, tmp_path):
    import json

    from click.testing import CliRunner

    from maskunet_platform.cli import main as cli

    out, report = tmp_path / "tf.png", tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["generate", PROMPT, "--base", shapes_base, "--steps", "3", "--out", str(out),
                                      "--training-free", "--reward", "shapes:2", "--tf-schedule", "0,2",
                                      "--tf-lr", "0.05", "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["scheduler"] == "dpm++2m" and data["rewards"] == ["shapes:2"]
    assert [s["iterations"] for s in data["steps"]] == [0, 2, 2]
    assert all(s["reward_before"] is not None and s["reward_after"] is not None for s in data["steps"])
    assert data["steps"][0]["drop_fraction"] == {} and len(data["steps"][1]["drop_fraction"]) > 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("args, option", [
    (["--training-free", "--tf-lr", "-1"], "--tf-lr"),
    (["--training-free", "--tf-iters", "2", "--tf-schedule", "1"], "--tf-iters"),
    (["--training-free", "--tf-schedule", "1x9"], "--tf-schedule"),
    (["--training-free", "--tf-keep", "1.5"], "--tf-keep"),
    (["--training-free", "--reward", "fid"], "--reward"),
    (["--training-free", "--reward", "clip"], "MASKUNET_CLIP_PATH"),
    (["--reward", "shapes"], "--reward needs --training-free"),
    (["--scheduler", "pndm"], "--scheduler"),
])
def test_cli_bad_sampler_options_exit_2_naming_the_option(tiny_base, tmp_path, args, option, monkeypatch):
    from click.testing import CliRunner

    from maskunet_platform.cli import main as cli

    monkeypatch.delenv("MASKUNET_CLIP_PATH", raising=False)
    result = CliRunner().invoke(cli, ["generate", "x", "--base", tiny_base, "--steps", "2",
                                      "--out", str(tmp_path / "x.png"), *args])
    assert result.exit_code == 2, result.output
    assert option in result.output and not (tmp_path / "x.png").exists()


def test_cli_scheduler_option_without_training_free(tiny_base, tmp_path):
    from click.testing import CliRunner

    from maskunet_platform.cli import main as cli

    runs = {}
    for scheduler in ("ddim", "euler"):
        out = tmp_path / f"{scheduler}.png"
        result = CliRunner().invoke(cli, ["generate", "a red circle", "--base", tiny_base, "--steps", "3",
                                          "--scheduler", scheduler, "--out", str(out)])
        assert result.exit_code == 0, result.output
        runs[scheduler] = out.read_bytes()
    assert runs["ddim"] != runs["euler"]


def test_cli_bench_shapes_training_free_is_paired_with_plain(shapes_base, tmp_path):
    import json

    from click.testing import CliRunner

    from maskunet_platform.cli import main as cli

    result = CliRunner().invoke(cli, ["bench", "shapes", "--base", shapes_base, "--prompts", "2", "--seeds", "1",
                                      "--steps", "3", "--training-free", "--compare", "--tf-schedule", "1",
                                      "--no-tracking", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["results"]) == {"base", "training_free"} and report["items"] == 2
    assert report["difference"]["background"]["n"] == 2


def test_clip_reward_from_a_local_folder_is_differentiable(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from maskunet.tiny import write_tokenizer_files

    write_tokenizer_files(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path), pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)

    reward = build_reward([f"clip={tmp_path}:2", "shapes:0.5"])
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    value = reward(images, [PROMPT, "a red circle"])
    assert value.shape == (2,) and torch.isfinite(value).all()
    clip_alone = build_reward([f"clip={tmp_path}"])(images, [PROMPT, "a red circle"])
    assert torch.allclose(value, 2 * clip_alone + 0.5 * ShapesReward()(images, [PROMPT, "a red circle"]))
    value.sum().backward()
    assert images.grad.abs().sum() > 0


def test_a_pipeline_with_trained_masks_samples_training_free_like_the_base(tiny_base):
    """One loaded pipeline serves both modes: training-free sampling pauses the trained masks
    (the same image as a pipeline without them), and the trained masks work again after."""
    from maskunet import MaskConfig, MaskGenerator

    torch.manual_seed(0)
    plain_pipe = load(tiny_base, "dpm++2m")
    generator = MaskGenerator.from_unet(plain_pipe.unet, MaskConfig(logit_bias=0.0, code_init_std=0.5))
    masked_pipe = MaskUNetPipeline.from_base(tiny_base, masks=generator)
    masked_pipe.set_progress_bar_config(disable=True)
    masked_pipe.scheduler = make_scheduler("dpm++2m", masked_pipe.scheduler.config)
    masked_before, _ = sample(masked_pipe)
    config = TrainingFreeConfig(schedule=1)
    free_plain, _ = sample(plain_pipe, config)
    free_masked, out = sample(masked_pipe, config)
    assert np.array_equal(free_plain, free_masked) and sum(r.flipped for r in out.steps) > 0
    masked_after, _ = sample(masked_pipe)
    plain, _ = sample(plain_pipe)
    assert np.array_equal(masked_before, masked_after) and not np.array_equal(masked_after, plain)
