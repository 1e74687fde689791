"""How often the subject appears in new contexts, base vs trained, paired, detector-based.

New contexts: `data.subject.report.template` filled with every (grid cell, background)
pair other than the instance images' contexts (and backgrounds of the subject's own colour),
in a seeded order; the first `prompts` of them, each drawn with `seeds` seeds by the base
(tuned weights off) and by the trained model (on): the same initial latents, so per-image
scores pair up. The shapes detector reads every image; per image:

- subject: the named cell shows the subject's colour and kind (as the detector reads the
  instance images: `subject.json` of the prepared data);
- subject_anywhere: some cell shows it;
- background: the image's background is the prompt's (the new context was followed).

With `report.words_template` the base also draws the subject described in words in the same
contexts ("words" in the results): how often the base can draw it there at all.

Intervals are the shapes benchmark's (bench/shapes/scoring.py): 95% Wilson per model, a
95% paired t-interval on trained - base.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from maskunet_platform.bench.shapes.detector import Detection, detect
from maskunet_platform.bench.shapes.generate import generate_images, image_grid
from maskunet_platform.bench.shapes.scoring import paired_difference, summarize
from maskunet_platform.data.sample import COLOURS, Shape

CATEGORIES = ("subject", "subject_anywhere", "background")
MODELS = ("base", "masked")  # "masked": the trained weights on (masks, LoRA or U-Net)
GRID_PROMPTS = 8


@dataclass(frozen=True)
class SubjectPrompt:
    caption: str
    row: int
    col: int
    background: str


@dataclass
class SubjectReport:
    subject: dict  # {"colour", "kind"} as detected in the instance images
    prompts: list[SubjectPrompt]
    seeds: int
    method: str = "masks"  # train.method of the trained weights ("masked" in results)
    results: dict[str, dict] = field(default_factory=dict)
    difference: dict = field(default_factory=dict)
    scores: dict[str, list[dict]] = field(default_factory=dict)  # model -> per (prompt, seed): category -> 0/1
    grid_png: bytes = b""

    @property
    def items(self) -> int:
        return len(self.prompts) * self.seeds

    def metrics(self, prefix: str = "subject") -> dict[str, float]:
        out = {f"{prefix}/items": float(self.items)}
        for name, summary in [*self.results.items(), ("diff", self.difference)]:
            for category, s in summary.items():
                if s["mean"] is not None:
                    out.update({f"{prefix}/{name}/{category}": s["mean"], f"{prefix}/{name}/{category}_lo": s["lo"],
                                f"{prefix}/{name}/{category}_hi": s["hi"]})
        return out

    def to_json(self) -> dict:
        return {"subject": self.subject, "method": self.method, "items": self.items, "seeds": self.seeds,
                "prompts": [p.caption for p in self.prompts], "results": self.results,
                "difference": self.difference, "categories": list(CATEGORIES), "scores": self.scores}


def where_phrase(row: int, col: int) -> str:
    """The captions' grid-cell phrase ("at the top left", "in the center")."""
    return Shape("circle", "red", "large", row, col).phrase().split(" circle ", 1)[1]


def new_context_prompts(template: str, n: int, subject_colour: str, exclude: list, seed: int = 0) -> list[SubjectPrompt]:
    """The first `n` new contexts in a seeded order (see the module docstring)."""
    seen = {(bg, r, c) for bg, r, c in exclude}
    pool = [SubjectPrompt(template.format(where=where_phrase(r, c), background=bg), r, c, bg)
            for bg in COLOURS if bg != subject_colour for r in range(3) for c in range(3) if (bg, r, c) not in seen]
    if n > len(pool):
        raise ValueError(f"data.subject.report.prompts: only {len(pool)} new contexts exist, asked for {n}")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def score(prompt: SubjectPrompt, detection: Detection, subject: dict) -> dict[str, float]:
    def is_subject(cell) -> bool:
        return cell is not None and (cell.colour, cell.kind) == (subject["colour"], subject["kind"])

    return {"subject": float(is_subject(detection.at(prompt.row, prompt.col))),
            "subject_anywhere": float(any(is_subject(c) for c in detection.cells)),
            "background": float(detection.background == prompt.background)}


def run_subject_report(pipe, marker: dict, settings) -> SubjectReport:
    """`pipe`: a MaskUNetPipeline with the trained weights (masks, LoRA or a fine-tuned U-Net);
    `marker`: the prepared data's subject.json; `settings`: data.subject.report."""
    subject = marker["subject"]
    prompts = new_context_prompts(settings.template, settings.prompts, subject["colour"], marker["contexts"],
                                  settings.seed)
    seeds = list(range(settings.seeds))
    report = SubjectReport(subject, prompts, settings.seeds, pipe.tuning_kind or "masks")
    images = {}
    # "words": the base asked for the subject in words in the same contexts: what it can draw.
    runs = [(m, [p.caption for p in prompts]) for m in MODELS]
    if settings.words_template:
        runs.append(("words", [settings.words_template.format(where=where_phrase(p.row, p.col),
                                                              background=p.background) for p in prompts]))
    pairs = [p for p in prompts for _ in seeds]
    for model, captions in runs:
        images[model] = generate_images(pipe, captions, seeds, settings.steps, settings.guidance,
                                        settings.batch_size, masks=model == "masked")
        report.scores[model] = [score(p, detect(im), subject) for p, im in zip(pairs, images[model])]
        report.results[model] = summarize(report.scores[model], CATEGORIES)
    report.difference = paired_difference(report.scores["base"], report.scores["masked"], CATEGORIES)
    tiles = [images[m][i * len(seeds)] for i in range(min(GRID_PROMPTS, len(prompts))) for m in MODELS]
    buf = io.BytesIO()
    image_grid(tiles, columns=len(MODELS)).save(buf, format="PNG")
    report.grid_png = buf.getvalue()
    return report


def subject_report(job, base_location: str, weights_dir, device: str, dtype):
    """In the post-training task: the report for the job's prepared subject data, or None
    when the report is off or the detector saw no subject in the instance images."""
    from maskunet import MaskUNetPipeline
    from maskunet_platform.subject.data import read_marker

    settings = job.data.subject.report
    marker = read_marker(job.data.source, job.data.s3_endpoint_url)
    if not settings.prompts or marker.get("subject") is None:
        return None
    pipe = MaskUNetPipeline.from_base(base_location, masks=str(weights_dir), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return run_subject_report(pipe, marker, settings)


def format_rows(metrics: dict[str, float], prefix: str = "subject", trained: str = "masks") -> list[str]:
    """Console rows `category  base [lo, hi]  masks [lo, hi]  masks - base [lo, hi]`; `trained`
    names the trained weights' column (METHOD_LABELS)."""
    from maskunet_platform.bench.shapes.benchmark import _interval

    columns = [("base", f"{prefix}/base"), (trained, f"{prefix}/masked"),
               (f"{trained} - base (paired)", f"{prefix}/diff")]
    if f"{prefix}/words/subject" in metrics:  # the base asked in words: the ceiling
        columns.append(("base, in words", f"{prefix}/words"))
    rows = [f"{'':<17}" + "".join(f"{name:>24}" for name, _ in columns)]
    for category in CATEGORIES:
        cells = [_interval(metrics, f"{key}/{category}", signed=key.endswith("diff")) for _, key in columns]
        rows.append(f"{category:<17}" + "".join(f"{c:>24}" for c in cells))
    return rows
