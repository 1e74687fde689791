"""The shapes benchmark core: prompts, detector, scores and intervals, KID, generation."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from maskunet_platform.bench.shapes.detector import CellDetection, Detection, detect
from maskunet_platform.bench.shapes.features import image_features, kid, measure_reference_scaling, reference_scaling
from maskunet_platform.bench.shapes.generate import generate_images, image_grid, items
from maskunet_platform.bench.shapes.prompts import BenchPrompt, benchmark_prompts, one_shape_pool, real_images
from maskunet_platform.bench.shapes.scoring import (
    CATEGORIES, paired_difference, score, summarize, t_quantile, wilson_interval,
)
from maskunet_platform.data.sample import COLOURS, Shape, draw_scene, is_benchmark_caption, scene_caption

N_PROMPTS = 200


@pytest.fixture(scope="module")
def prompts() -> list[BenchPrompt]:
    return benchmark_prompts(N_PROMPTS)


def test_prompts_are_held_out_distinct_alternating_and_deterministic(prompts):
    assert all(is_benchmark_caption(p.caption) for p in prompts)
    assert all(p.caption == scene_caption(p.shapes, p.background) for p in prompts)
    assert len({p.caption for p in prompts}) == N_PROMPTS
    assert [len(p.shapes) for p in prompts] == [1, 2] * (N_PROMPTS // 2)
    again = benchmark_prompts(30)  # deterministic, and a prefix of any longer list
    assert [p.caption for p in again] == [p.caption for p in prompts[:30]]
    assert [p.caption for p in benchmark_prompts(30, seed=1)] != [p.caption for p in again]
    with pytest.raises(ValueError, match="one-shape"):  # more than exist: refused up front
        benchmark_prompts(2 * one_shape_pool() + 1)


@pytest.mark.parametrize("resolution", [64, 128])
def test_detector_reads_real_images_in_every_category(prompts, resolution):
    images = real_images(prompts, resolution, seed=0)
    assert len(images) == N_PROMPTS
    assert images[0].shape == (resolution, resolution, 3) and images[0].dtype == np.uint8
    summary = summarize([score(p, detect(im)) for p, im in zip(prompts, images)])
    assert {c: s["mean"] >= 0.98 for c, s in summary.items()} == dict.fromkeys(CATEGORIES, True), summary
    assert summary["binding"]["n"] == N_PROMPTS // 2 and summary["colour"]["n"] == N_PROMPTS


def test_detector_takes_pil_images_of_other_sizes():
    shapes = [Shape("ring", "cyan", "large", 0, 2), Shape("triangle", "brown", "small", 2, 0)]
    found = detect(draw_scene(shapes, "white", 200))
    assert found.background == "white" and found.occupied() == {(0, 2), (2, 0)}
    assert found.at(0, 2) == CellDetection("cyan", "ring") and found.at(2, 0) == CellDetection("brown", "triangle")
    blank = detect(Image.new("RGB", (90, 60), COLOURS["blue"]))
    assert blank.background == "blue" and blank.occupied() == set()


def test_scores_are_low_for_images_of_other_prompts(prompts):
    subset = prompts[:40]
    images = real_images(subset, 64, seed=0)
    shifted = summarize([score(p, detect(im)) for p, im in zip(subset, images[1:] + images[:1])])
    for category in ("position", "colour", "kind", "binding"):
        assert shifted[category]["mean"] < 0.3, (category, shifted[category])
    p = subset[1]  # a two-shape prompt against a blank image of its background
    assert score(p, detect(np.full((64, 64, 3), COLOURS[p.background], np.uint8))) == {
        "background": 1.0, "colour": 0.0, "kind": 0.0, "position": 0.0, "binding": 0.0}


def test_swapped_colours_give_binding_zero(prompts):
    pairs = [p for p in prompts if len(p.shapes) == 2 and p.shapes[0].colour != p.shapes[1].colour][:20]
    swapped = []
    for p in pairs:
        a, b = p.shapes
        shapes = [dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)]
        swapped.append(BenchPrompt(scene_caption(shapes, p.background), shapes, p.background))
    scores = [score(p, detect(im)) for p, im in zip(pairs, real_images(swapped, 64, seed=0))]
    assert all(s["binding"] == 0.0 and s["colour"] == 0.0 for s in scores)
    assert all(s["position"] == 1.0 and s["kind"] == 1.0 for s in scores)  # layout still right


def test_score_of_a_known_detection():
    shapes = [Shape("circle", "red", "small", 0, 0), Shape("square", "blue", "large", 1, 1)]
    prompt = BenchPrompt(scene_caption(shapes, "white"), shapes, "white")
    cells = [None] * 9
    cells[0] = CellDetection("red", "square")  # right colour, wrong kind
    cells[4] = CellDetection("green", "square")  # wrong colour, right kind
    assert score(prompt, Detection("white", tuple(cells))) == {
        "background": 1.0, "colour": 0.5, "kind": 0.5, "position": 1.0, "binding": 0.0}
    cells[8] = CellDetection("red", "ring")  # an extra object spoils the layout
    assert score(prompt, Detection("gray", tuple(cells)))["position"] == 0.0
    one = BenchPrompt("...", shapes[:1], "white")
    assert score(one, Detection("white", tuple(cells)))["binding"] is None


def test_summary_intervals():
    lo, hi = wilson_interval(0.75, 4)
    assert (round(lo, 3), round(hi, 3)) == (0.301, 0.954)  # textbook Wilson for 3 of 4
    lo, hi = wilson_interval(1.0, 50)
    assert 0.92 < lo < 0.94 and hi == pytest.approx(1.0)
    scores = [{"background": v, "colour": 1.0, "kind": 0.5, "position": v, "binding": None if i % 2 else v}
              for i, v in enumerate([1.0, 1.0, 1.0, 0.0])]
    s = summarize(scores)
    assert s["background"]["mean"] == 0.75 and s["background"]["n"] == 4
    assert (s["background"]["lo"], s["background"]["hi"]) == wilson_interval(0.75, 4)
    assert s["binding"]["n"] == 2 and s["binding"]["mean"] == 1.0
    assert s["colour"]["lo"] < 1.0 and s["kind"]["lo"] < 0.5 < s["kind"]["hi"]
    assert summarize([])["colour"] == {"mean": None, "lo": None, "hi": None, "n": 0}


def test_t_quantiles_and_paired_differences():
    assert [round(t_quantile(0.975, df), 3) for df in (1, 2, 9, 30)] == [12.706, 4.303, 2.262, 2.042]
    a = [{c: float(i % 2) for c in CATEGORIES} for i in range(10)]
    same = paired_difference(a, a)
    assert all(d["mean"] == 0.0 and d["lo"] <= 0.0 <= d["hi"] and d["n"] == 10 for d in same.values())
    zeros = [dict.fromkeys(CATEGORIES, 0.0) for _ in range(10)]
    half = [dict.fromkeys(CATEGORIES, float(i < 5)) for i in range(10)]
    d = paired_difference(zeros, half)["colour"]
    # mean 0.5, sd sqrt(10/36), t(9) = 2.262: 0.5 +- 0.377
    assert d["mean"] == 0.5 and d["lo"] == pytest.approx(0.123, abs=1e-3) and d["hi"] == pytest.approx(0.877, abs=1e-3)
    assert paired_difference(half, zeros)["colour"]["mean"] == -0.5
    with pytest.raises(ValueError):
        paired_difference(zeros, half[:3])


def test_shipped_feature_scaling_is_what_the_real_images_measure():
    # Regenerate with features.write_reference_scaling after changing the features or the real images.
    shipped, measured = reference_scaling(), measure_reference_scaling()
    for name, a, b in zip(("mean", "scale"), shipped, measured):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
    assert (shipped[1] > 0).all()


def test_kid_is_near_zero_for_real_images_and_large_for_noise(prompts):
    more = benchmark_prompts(2 * N_PROMPTS)[N_PROMPTS:]
    real_a = image_features(real_images(prompts[:120], 64, seed=0))
    real_b_images = real_images(more[:120], 64, seed=7)
    real_b = image_features(real_b_images)
    rng = np.random.default_rng(0)
    noise = image_features([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(120)])
    blurred = image_features([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1)))
                              for im in real_b_images])
    assert real_a.shape == (120, real_a.shape[1]) and np.isfinite(real_a).all()
    same, same_std = kid(real_a, real_b)
    assert abs(same) < 0.25 and same_std < 0.25
    assert kid(real_a, real_b) == (same, same_std)  # seeded subsets: deterministic
    assert kid(real_a, blurred)[0] > 5 * max(abs(same), 0.05)
    assert kid(real_a, noise)[0] > 100 * max(abs(same), 0.05)


@pytest.fixture(scope="module")
def masked_pipe(tmp_path_factory):
    from maskunet import MaskConfig, MaskGenerator, MaskUNetPipeline
    from maskunet.tiny import save_tiny_base

    base = save_tiny_base(tmp_path_factory.mktemp("bench-tiny-base"), seed=0)
    plain = MaskUNetPipeline.from_base(base)
    torch.manual_seed(0)
    generator = MaskGenerator.from_unet(plain.unet, MaskConfig())
    for name, p in generator.named_parameters():
        if name.endswith("b_out"):
            p.data.fill_(0.0)  # masks that drop about half of the entries: visibly different images
    pipe = MaskUNetPipeline.from_base(base, masks=generator)
    for pp in (plain, pipe):
        pp.set_progress_bar_config(disable=True)
    # One intra-op thread: tiny matrices gain nothing from more, and on a busy 2-core machine
    # the thread pool's first start alone took >10 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield plain, pipe
    torch.set_num_threads(threads)


def test_generate_images_is_per_item_deterministic_whatever_the_batch(masked_pipe, prompts):
    plain, pipe = masked_pipe
    chosen, seeds = prompts[:2], [3, 11]
    progress = []
    one = generate_images(pipe, chosen, seeds, steps=2, batch_size=1, masks=False,
                          on_batch=lambda done, total: progress.append((done, total)))
    four = generate_images(pipe, chosen, seeds, steps=2, batch_size=4, masks=False)
    assert pipe.masks_enabled  # masks=False held for those calls only
    assert len(one) == len(items(chosen, seeds)) == 4 and progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in one)
    assert all(np.abs(a.astype(int) - b).max() <= 2 for a, b in zip(one, four))
    assert np.abs(one[0].astype(int) - one[1]).mean() > 5  # seeds matter
    assert all(np.array_equal(a, b) for a, b in zip(four, generate_images(plain, chosen, seeds, steps=2)))
    masked = generate_images(pipe, chosen[:1], seeds[:1], steps=2, masks=True)
    assert not np.array_equal(masked[0], four[0])
    with pytest.raises(ValueError):
        generate_images(plain, chosen, seeds, steps=2, masks=True)
    # Generated images go through the detector and features like real ones.
    scores = [score(p, detect(im)) for (p, _), im in zip(items(chosen, seeds), one)]
    assert all(set(s) == set(CATEGORIES) for s in scores) and np.isfinite(image_features(one)).all()
    grid = image_grid(one, columns=3)
    assert grid.size == (3 * 64 + 2 * 2, 2 * 64 + 2)
