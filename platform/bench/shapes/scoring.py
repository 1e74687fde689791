"""Per-image benchmark scores, their 95% confidence intervals, and paired model comparisons.

Categories (each in [0, 1] per image, `None` where it does not apply):

- background: the detected background colour is the prompt's;
- colour / kind: share of the prompt's shapes whose cell shows the named colour / kind;
- position: the occupied cells are exactly the named cells (1/0);
- binding: two-shape prompts only, 1 iff each cell shows its own shape's colour (no swap or
  leak between the two objects, the attribute-binding failure of T2I models).

Intervals (deterministic, no resampling):

- `summarize`: Wilson score interval on the mean. Exact in form for the 0/1 categories; for
  colour and kind (0, 1/2 or 1 per image) it is conservative, since a variable in [0, 1]
  with mean p has variance at most p(1 - p), the Bernoulli variance Wilson assumes.
- `paired_difference`: Student-t interval over the per-item differences b - a, clipped to
  [-1, 1]; pairing on the same prompt and seed removes the prompt-difficulty variance.
"""
from __future__ import annotations

import math

import numpy as np

from maskunet_platform.bench.shapes.detector import Detection
from maskunet_platform.bench.shapes.prompts import BenchPrompt

CATEGORIES = ("background", "colour", "kind", "position", "binding")
Z95 = 1.959963984540054  # standard normal 0.975 quantile


def score(prompt: BenchPrompt, detection: Detection) -> dict[str, float | None]:
    """One image's score per category (see the module docstring)."""
    found = [detection.at(s.row, s.col) for s in prompt.shapes]
    colour_ok = [d is not None and d.colour == s.colour for s, d in zip(prompt.shapes, found)]
    kind_ok = [d is not None and d.kind == s.kind for s, d in zip(prompt.shapes, found)]
    return {
        "background": float(detection.background == prompt.background),
        "colour": float(np.mean(colour_ok)),
        "kind": float(np.mean(kind_ok)),
        "position": float(detection.occupied() == {(s.row, s.col) for s in prompt.shapes}),
        "binding": float(all(colour_ok)) if len(prompt.shapes) == 2 else None,
    }


def wilson_interval(mean: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion `mean` observed over `n` items."""
    if n <= 0:
        raise ValueError("n must be positive")
    denom = 1 + z * z / n
    centre = (mean + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(mean * (1 - mean), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _values(scores: list[dict], category: str) -> list[float]:
    return [s[category] for s in scores if s.get(category) is not None]


def summarize(scores: list[dict], categories: tuple[str, ...] = CATEGORIES) -> dict[str, dict]:
    """{category: {mean, lo, hi, n}} with a 95% Wilson interval; n = items scored in it."""
    out = {}
    for category in categories:
        values = _values(scores, category)
        if not values:
            out[category] = {"mean": None, "lo": None, "hi": None, "n": 0}
            continue
        mean = float(np.mean(values))
        lo, hi = wilson_interval(mean, len(values))
        out[category] = {"mean": mean, "lo": lo, "hi": hi, "n": len(values)}
    return out


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile for 0.5 < p < 1 (bisection on a numerically integrated CDF)."""
    const = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:
        u = np.linspace(0.0, x, 2001)  # the density is smooth: Simpson's rule is ample
        f = const * (1 + u * u / df) ** (-(df + 1) / 2)
        return 0.5 + (u[1] - u[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def paired_difference(scores_a: list[dict], scores_b: list[dict],
                      categories: tuple[str, ...] = CATEGORIES) -> dict[str, dict]:
    """{category: {mean, lo, hi, n}} of b - a over items scored in both (same index = same
    prompt and seed), with a 95% paired t-interval clipped to [-1, 1]."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"paired scores need equal lengths, got {len(scores_a)} and {len(scores_b)}")
    out = {}
    for category in categories:
        diffs = np.array([b[category] - a[category] for a, b in zip(scores_a, scores_b)
                          if a.get(category) is not None and b.get(category) is not None])
        n = len(diffs)
        if n == 0:
            out[category] = {"mean": None, "lo": None, "hi": None, "n": 0}
            continue
        mean = float(diffs.mean())
        # One item says nothing about spread: the interval is the whole possible range.
        half = t_quantile(0.975, n - 1) * diffs.std(ddof=1) / math.sqrt(n) if n > 1 else 2.0
        out[category] = {"mean": mean, "lo": max(-1.0, mean - half), "hi": min(1.0, mean + half), "n": n}
    return out
