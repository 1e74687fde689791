"""KID over hand-crafted features: an offline FID stand-in for the shapes world.

FID/KID normally embed images with an ImageNet Inception network; none can be downloaded
here, and its features would mostly ignore what matters in this world anyway. Every real
image is a flat background plus 1-2 flat palette-coloured shapes in a 3x3 grid, so a
generated image's distribution drifts from the real one in a few visible ways, each given a
block of features (images are first resized to 48x48, so any resolution compares):

- per-cell mean colour (CIELAB, 9 x 3): layout — where colour mass sits, what the background is;
- per-cell luminance spread (9): flat cells (empty) vs cells holding a shape or texture;
- palette histogram (12 + 1): share of pixels nearest each palette colour, plus the share
  far from all of them (muddy, off-palette colours a weak model produces);
- gradient orientation histogram (8, magnitude-weighted): squares/crosses give horizontal
  and vertical edges, triangles oblique ones, circles and rings every orientation;
- per-cell edge density (9) and mean |Laplacian| (1): where the outlines are, how crisp;
- fidelity (7): histogram of each pixel's distance to the nearest palette colour, edge
  sharpness (|Laplacian| per unit gradient) and the share of flat pixels. These barely vary
  over real images, so colour casts, blur and noise show up here first.

Each block is scaled by its spread over a fixed set of real images (`reference_scaling`).

KID is the unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (as in
Binkowski et al. 2018), averaged over seeded random subsets: unbiased (near 0, possibly
slightly negative, for two samples of one distribution) and usable with few images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maskunet_platform.bench.shapes.detector import PALETTE_LAB, srgb_to_lab
from maskunet_platform.bench.shapes.prompts import benchmark_prompts, real_images

SIDE = 48  # features are computed at this resolution (divisible by 3: exact grid cells)
# Feature blocks, in `_one`'s order: cell colours, cell spreads, palette histogram, edges, fidelity.
BLOCKS = (slice(0, 27), slice(27, 36), slice(36, 49), slice(49, 67), slice(67, 74))
N_FEATURES = 74
PURITY_BINS = (0, 5, 10, 20, 40, np.inf)  # Delta E to the nearest palette colour
FLAT_GRADIENT = 0.01  # luminance step (L/100 per px) below which a pixel counts as flat
REFERENCE_IMAGES, REFERENCE_SEED = 256, 1234  # real images that fix the feature scaling
OFF_PALETTE_DELTA_E = 25.0  # farther than this from every palette colour: "off-palette"
ORIENTATION_BINS = 8


def _resized(image) -> np.ndarray:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    img = img.convert("RGB")
    if img.size != (SIDE, SIDE):
        img = img.resize((SIDE, SIDE), Image.Resampling.BOX)  # area average: no aliasing
    return np.asarray(img, np.float64)


def _cells(x: np.ndarray) -> np.ndarray:
    """(SIDE, SIDE, ...) -> (9, cell*cell, ...) in row-major cell order."""
    c = SIDE // 3
    return x.reshape(3, c, 3, c, *x.shape[2:]).swapaxes(1, 2).reshape(9, c * c, *x.shape[2:])


def _gradients(lum: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central-difference gradient (gx, gy) and 4-neighbour Laplacian of a luminance map."""
    p = np.pad(lum, 1, mode="edge")
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) / 2
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) / 2
    return gx, gy, p[1:-1, 2:] + p[1:-1, :-2] + p[2:, 1:-1] + p[:-2, 1:-1] - 4 * lum


def _edge_features(gx: np.ndarray, gy: np.ndarray, lap: np.ndarray) -> np.ndarray:
    mag = np.hypot(gx, gy)
    # Unsigned orientation: an edge's direction, whichever side is brighter.
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * ORIENTATION_BINS).astype(int), ORIENTATION_BINS - 1)
    hist = np.bincount(bins.ravel(), weights=mag.ravel(), minlength=ORIENTATION_BINS) / mag.size
    return np.concatenate([hist, _cells(mag).mean(axis=1), [np.abs(lap).mean()]])


def _fidelity_features(mag: np.ndarray, lap: np.ndarray, palette_distance: np.ndarray) -> np.ndarray:
    """Nearly constant over real images, so any drift in them is a rendering defect."""
    purity = np.histogram(palette_distance, bins=PURITY_BINS)[0] / palette_distance.size
    sharpness = np.abs(lap).sum() / (mag.sum() + 1e-6)  # blur lowers it, noise raises it
    return np.concatenate([purity, [sharpness, (mag < FLAT_GRADIENT).mean()]])


def _one(image) -> np.ndarray:
    lab = srgb_to_lab(_resized(image))
    lum = lab[..., 0] / 100
    gx, gy, lap = _gradients(lum)
    d = np.linalg.norm(lab[..., None, :] - PALETTE_LAB, axis=-1)  # (H, W, palette)
    nearest = np.bincount(d.argmin(axis=-1).ravel(), minlength=len(PALETTE_LAB)) / lum.size
    off_palette = (d.min(axis=-1) > OFF_PALETTE_DELTA_E).mean()
    return np.concatenate([
        (_cells(lab).mean(axis=1) / 100).ravel(),  # L in [0, 1], a/b roughly [-1, 1]
        _cells(lum).std(axis=1),
        nearest, [off_palette],
        _edge_features(gx, gy, lap),
        _fidelity_features(np.hypot(gx, gy), lap, d.min(axis=-1)),
    ])


def raw_features(images) -> np.ndarray:
    """(N, N_FEATURES) unnormalised features of uint8 HxWx3 arrays or PIL images."""
    return np.stack([_one(im) for im in images])


def reference_scaling() -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per feature, as `measure_reference_scaling` measures them, shipped in
    reference_scaling.py (measuring takes seconds in every process that scores images; a
    test checks the shipped values against a fresh measurement)."""
    from maskunet_platform.bench.shapes.reference_scaling import MEAN, SCALE

    return np.asarray(MEAN), np.asarray(SCALE)


def measure_reference_scaling() -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per feature, measured on fixed real images.

    The blocks have very different natural ranges (a colour histogram vs gradient sizes);
    without a common scale the kernel would see only the largest. Each block is divided by
    its own RMS spread on real data (one number per block keeps the relative weights inside
    it), so every block counts about equally and KID values compare across runs.
    """
    prompts = benchmark_prompts(REFERENCE_IMAGES, seed=REFERENCE_SEED)
    feats = raw_features(real_images(prompts, SIDE, seed=REFERENCE_SEED))
    mean, scale = feats.mean(axis=0), np.empty(feats.shape[1])
    for block in BLOCKS:
        scale[block] = max(float(np.sqrt(feats[:, block].var(axis=0).mean())), 1e-6)
    return mean, scale


def write_reference_scaling(path: str) -> None:
    """Measure and write reference_scaling.py (after a change to the features or the real images)."""
    mean, scale = measure_reference_scaling()
    values = {"MEAN": mean, "SCALE": scale}
    body = "".join(f"{name} = [\n" + "".join(f"    {float(v)!r},\n" for v in vector) + "]\n"
                   for name, vector in values.items())
    header = ('"""Feature scaling measured on the fixed real images (features.measure_reference_scaling).\n\n'
              'Generated: python -c "from maskunet_platform.bench.shapes.features import write_reference_scaling; '
              'write_reference_scaling(\'platform/bench/shapes/reference_scaling.py\')"\n"""\n')
    Path(path).write_text(header + body)


def image_features(images) -> np.ndarray:
    """(N, N_FEATURES) features normalised with `reference_scaling` (see the module docstring)."""
    mean, scale = reference_scaling()
    return (raw_features(images) - mean) / scale


def _mmd2_unbiased(kaa: np.ndarray, kbb: np.ndarray, kab: np.ndarray) -> float:
    m, n = len(kaa), len(kbb)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def kid(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 50, subset_size: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over `subsets` seeded subsets.

    Each subset draws min(subset_size, len) rows without replacement from each set.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"KID needs at least 2 feature rows per set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    # Kernel matrices once, then only index them: subsets cost no further matrix products.
    kaa, kbb, kab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    values = []
    for _ in range(subsets):
        i, j = rng.choice(len(a), m, replace=False), rng.choice(len(b), m, replace=False)
        values.append(_mmd2_unbiased(kaa[np.ix_(i, i)], kbb[np.ix_(j, j)], kab[np.ix_(i, j)]))
    return float(np.mean(values)), float(np.std(values))
