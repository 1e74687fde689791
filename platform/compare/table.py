"""The comparison table: one row per method (and the base), paired statistics against masks."""
from dataclasses import dataclass, field
from typing import Optional

from maskunet_platform.bench.shapes.scoring import CATEGORIES, paired_difference
from maskunet_platform.subject.report import CATEGORIES as SUBJECT_CATEGORIES
from maskunet_platform.train.evaluate import mean_interval


@dataclass
class MethodResult:
    method: str
    trainable_params: int
    peak_memory_mb: float
    images_per_s: float
    eval: object  # train.evaluate.EvalResult (per-row losses, same rows/noise/timesteps for every method)
    shapes: object = None  # bench.shapes.benchmark.ShapesReport or None
    weights_dir: str = ""
    run_name: str = ""
    mlflow_run_id: Optional[str] = None  # the method's training run (loss curves)
    subject: object = None  # subject.report.SubjectReport of a subject job, or None


@dataclass
class CompareTable:
    rows: list[dict] = field(default_factory=list)  # method, params, memory, speed, loss [lo, hi], shapes
    # method -> {"loss": {...}, "<category>": {...}}: each method minus the reference entry
    versus_masks: dict = field(default_factory=dict)
    reference: str = "masks"  # the entry "masks", else the first compared entry

    def to_json(self) -> dict:
        return {"rows": self.rows, "versus_masks": self.versus_masks, "reference": self.reference}

    def metrics(self) -> dict[str, float]:
        out = {}
        for row in self.rows:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"{row['method']}/{key}"] = float(value)
                elif isinstance(value, dict) and value.get("mean") is not None:
                    out.update({f"{row['method']}/{key}": value["mean"], f"{row['method']}/{key}_lo": value["lo"],
                                f"{row['method']}/{key}_hi": value["hi"]})
        return out


def _interval(values: list[float]) -> dict:
    mean, lo, hi = mean_interval(values)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(values)}


def _shapes_cells(summary: Optional[dict], kid: Optional[tuple]) -> dict:
    cells = {f"shapes_{c}": summary[c] for c in CATEGORIES if summary and c in summary}
    if kid is not None:
        cells["shapes_kid"] = kid[0]
    return cells


def _subject_cells(report, model: str) -> dict:
    return {f"subject_{c}": report.results[model][c] for c in SUBJECT_CATEGORIES} if report else {}


def build_table(results: list[MethodResult]) -> CompareTable:
    first = results[0]
    base_shapes = first.shapes.results.get("base") if first.shapes else None
    table = CompareTable([{"method": "base", "trainable_params": 0, "peak_memory_mb": None, "images_per_s": None,
                           "heldout_loss": _interval(first.eval.per_sample["base"]),
                           **_shapes_cells(base_shapes, first.shapes.kid.get("base") if first.shapes else None),
                           **_subject_cells(first.subject, "base")}])
    for r in results:
        if r.eval.per_sample["base"] != first.eval.per_sample["base"]:
            raise RuntimeError(f"{r.method}: the base's held-out losses differ from {first.method}'s: not paired")
        shapes = r.shapes.results.get("masked") if r.shapes else None
        table.rows.append({"method": r.method, "trainable_params": r.trainable_params,
                           "peak_memory_mb": r.peak_memory_mb, "images_per_s": r.images_per_s,
                           "heldout_loss": _interval(r.eval.per_sample["masked"]),
                           **_shapes_cells(shapes, r.shapes.kid.get("masked") if r.shapes else None),
                           **_subject_cells(r.subject, "masked")})
    masks = next((r for r in results if r.method == "masks"), results[0])
    table.reference = masks.method
    for r in results:
        if r is masks:
            continue
        # Paired: the same rows, noise and timesteps (loss); the same prompts and seeds (shapes).
        diff = {"loss": _interval([o - m for m, o in zip(masks.eval.per_sample["masked"],
                                                         r.eval.per_sample["masked"])])}
        if masks.shapes and r.shapes:
            diff.update(paired_difference(masks.shapes.scores["masked"], r.shapes.scores["masked"]))
        if masks.subject and r.subject:  # the same new-context prompts and seeds
            subject = paired_difference(masks.subject.scores["masked"], r.subject.scores["masked"], SUBJECT_CATEGORIES)
            diff.update({f"subject_{c}": d for c, d in subject.items()})
        table.versus_masks[r.method] = diff
    return table


def _cell(value, fmt: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return "-" if value.get("mean") is None else f"{value['mean']:{fmt}} [{value['lo']:{fmt}}, {value['hi']:{fmt}}]"
    return f"{value:{fmt}}" if isinstance(value, float) else f"{value:,}"


def format_table(table: CompareTable) -> list[str]:
    """Console lines: the table, then masks against each other method (paired 95% intervals)."""
    shape_cols = [k for k in table.rows[0] if k.startswith(("shapes_", "subject_")) and k != "shapes_kid"]
    width = max(7, *(len(row["method"]) + 1 for row in table.rows))
    head = f"{'method':<{width}}{'trainable':>12}{'peak MB':>9}{'img/s':>7}{'held-out loss [95% CI]':>28}"
    head += "".join(f"{k.split('_', 1)[1]:>22}" for k in shape_cols) + f"{'KID':>8}"
    lines = [head]
    for row in table.rows:
        line = (f"{row['method']:<{width}}{_cell(row['trainable_params']):>12}{_cell(row['peak_memory_mb'], '.0f'):>9}"
                f"{_cell(row['images_per_s'], '.1f'):>7}{_cell(row['heldout_loss']):>28}")
        line += "".join(f"{_cell(row.get(k), '.2f'):>22}" for k in shape_cols)
        lines.append(line + f"{_cell(row.get('shapes_kid'), '.3f'):>8}")
    for method, diff in table.versus_masks.items():
        parts = [f"loss {_signed(diff['loss'], '.4f')}"]
        parts += [f"{c.removeprefix('subject_')} {_signed(d, '.2f')}" for c, d in diff.items()
                  if c != "loss" and d["mean"] is not None]
        lines.append(f"{method} - {table.reference} (paired; * = 95% CI excludes 0): " + ", ".join(parts))
    return lines


def _signed(d: dict, fmt: str) -> str:
    star = "*" if d["lo"] > 0 or d["hi"] < 0 else ""
    return f"{d['mean']:+{fmt}} [{d['lo']:+{fmt}}, {d['hi']:+{fmt}}]{star}"
