"""What a registered version was scored on, stored as version tags so a promotion gate can
reuse it: the paired held-out loss and the shapes benchmark, each with its settings and a
fingerprint. Two versions' numbers are comparable exactly when their fingerprints agree.

Held-out fingerprint: the evaluated rows' content digest (EvalResult.data_fingerprint) plus
the settings that change the numbers (rows, noise seed, timestep buckets). Shapes fingerprint:
the benchmark settings (prompts, seeds, steps, guidance, batch size, prompt seed), which fix
the prompts and the noise.
"""
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Optional

from maskunet_platform.bench.shapes.scoring import CATEGORIES

TAG_PREFIX = "maskunet.evidence."
KINDS = ("heldout", "shapes")
SHAPES_SCORE = "shapes/masked/score"  # mean of the category rates of the masked model
STANDARD_ERROR = "_se"  # suffix of a metric's standard error, where one is known


@dataclass(frozen=True)
class Evidence:
    kind: str  # "heldout" | "shapes"
    fingerprint: str
    settings: dict
    metrics: dict[str, float]

    @property
    def tag(self) -> str:
        return TAG_PREFIX + self.kind

    def to_tag_value(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# The data settings that decide which rows an evaluation reads and how they look, recorded so
# a gate can evaluate another version on the same rows (not performance knobs, not secrets).
DATA_KEYS = ("source", "image_column", "caption_column", "aesthetic_column", "resolution", "min_side",
             "min_aesthetic", "holdout_fraction", "encode")


def heldout_evidence(eval_result, job, split: str) -> Evidence:
    """From a paired eval (train.evaluate.EvalResult) of `job`'s data (`split`: holdout | all)."""
    settings = {"data_fingerprint": eval_result.data_fingerprint, "rows": eval_result.rows,
                "seed": job.train.eval.seed, "timestep_buckets": job.train.eval.timestep_buckets}
    data = job.data.model_dump(mode="json")
    recorded = {**settings, "split": split, "batch_size": job.train.eval.batch_size,
                "data": {key: data[key] for key in DATA_KEYS}}
    metrics = {k: v for k, v in eval_result.metrics().items() if k.startswith("eval/")}
    return Evidence("heldout", _fingerprint(settings), recorded, metrics)


def shapes_evidence(report) -> Evidence:
    """From a shapes benchmark report (bench.shapes.benchmark.ShapesReport) run with --compare."""
    settings = dict(vars(report.settings))
    metrics = {k: v for k, v in report.metrics().items() if not k.endswith(("_lo", "_hi"))}
    rates = [metrics[f"shapes/masked/{c}"] for c in CATEGORIES if f"shapes/masked/{c}" in metrics]
    if rates:
        metrics[SHAPES_SCORE] = sum(rates) / len(rates)
        # Its standard error, treating the category rates as independent binomials over the
        # benchmark's items: the gate tolerates a drop within the noise of two such scores.
        items = max(report.items, 1)
        metrics[SHAPES_SCORE + STANDARD_ERROR] = math.sqrt(sum(p * (1 - p) / items for p in rates)) / len(rates)
    return Evidence("shapes", _fingerprint(settings), settings, metrics)


def evidence_tags(*evidence: Optional[Evidence]) -> dict[str, str]:
    return {e.tag: e.to_tag_value() for e in evidence if e is not None}


def read_evidence(tags: dict[str, str], kind: str) -> Optional[Evidence]:
    """A version's logged evidence of `kind`, or None (missing or unreadable)."""
    text = tags.get(TAG_PREFIX + kind)
    if not text:
        return None
    try:
        data = json.loads(text)
        return Evidence(data["kind"], data["fingerprint"], data["settings"], data["metrics"])
    except (ValueError, KeyError, TypeError):
        return None
