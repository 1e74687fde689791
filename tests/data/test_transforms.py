"""The per-image transform on its own (no Ray): resize quality, crop placement, value range."""
import numpy as np
import torch
from PIL import Image

from maskunet_platform.data.model_inputs import pixels_to_model
from maskunet_platform.data.preprocess import crop_window, image_to_array


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: resampling errors show up on both."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


def test_resize_matches_pil_antialiased_bilinear_within_two_grey_levels():
    img = _photo(900, 700)
    x0, y0, side = crop_window(img.size, "center", np.random.default_rng(0))
    pil = np.asarray(img.resize((128, 128), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side)), np.float32)
    ours = image_to_array(img, 128, "center", False, np.random.default_rng(0)).astype(np.float32)
    diff = np.abs(ours.transpose(1, 2, 0) - pil)
    assert diff.max() <= 2.0 + 1e-4 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_crop_window_is_centred_or_random_inside_the_image():
    assert crop_window((900, 700), "center", np.random.default_rng(0)) == (100, 0, 700)
    assert crop_window((300, 500), "center", np.random.default_rng(0)) == (0, 100, 300)
    starts = {crop_window((900, 700), "random", np.random.default_rng(s))[0] for s in range(50)}
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 200


def test_flip_mirrors_and_uint8_extremes_scale_exactly_to_minus_one_and_one():
    img = Image.fromarray(np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, 0).repeat(3, 2))
    plain = image_to_array(img, 32, "center", False, np.random.default_rng(0))
    flips = [image_to_array(img, 32, "center", True, np.random.default_rng(s)) for s in range(8)]
    mirrored = [f for f in flips if not np.array_equal(f, plain)]
    assert mirrored and len(mirrored) < len(flips)  # a coin flip per image, not always or never
    np.testing.assert_array_equal(mirrored[0], plain[:, :, ::-1])
    assert plain.dtype == np.uint8 and plain.shape == (3, 32, 32)
    black, white = (image_to_array(Image.new("RGB", (40, 30), c), 16, "center", False, np.random.default_rng(0))
                    for c in ((0, 0, 0), (255, 255, 255)))
    assert (black == 0).all() and (white == 255).all()
    scaled = pixels_to_model(torch.from_numpy(np.stack([black, white])), torch.float32)
    assert scaled.dtype == torch.float32 and (scaled[0] == -1).all() and (scaled[1] == 1).all()
    grey = pixels_to_model(torch.full((1, 3, 2, 2), 100, dtype=torch.uint8), torch.float32)
    assert torch.allclose(grey, torch.full_like(grey, 100 / 127.5 - 1))
    out = np.zeros((3, 16, 16), np.uint8)
    assert image_to_array(Image.new("RGB", (40, 30), (255, 0, 0)), 16, "center", False,
                          np.random.default_rng(0), out=out) is out and out[0].min() == 255 and out[1:].max() == 0
