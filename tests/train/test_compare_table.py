"""The comparison table's subject cells (a subject job): each method's report, paired against masks."""
from types import SimpleNamespace

from maskunet_platform.bench.shapes.scoring import summarize
from maskunet_platform.compare.table import MethodResult, build_table, format_table
from maskunet_platform.subject.report import CATEGORIES, SubjectPrompt, SubjectReport


def _result(method: str, base: list[int], trained: list[int]) -> MethodResult:
    def scores(hits):  # the subject drawn in `hit` images; the background always followed
        return [{"subject": float(h), "subject_anywhere": float(h), "background": 1.0} for h in hits]

    prompts = [SubjectPrompt(f"a sks circle, context {i}", 0, i % 3, "blue") for i in range(len(base))]
    report = SubjectReport({"colour": "purple", "kind": "circle"}, prompts, 1, method,
                           scores={"base": scores(base), "masked": scores(trained)})
    report.results = {m: summarize(report.scores[m], CATEGORIES) for m in ("base", "masked")}
    losses = SimpleNamespace(per_sample={"base": [0.2, 0.3, 0.25, 0.3], "masked": [0.1, 0.2, 0.15, 0.2]})
    return MethodResult(method, 10, 1.0, 1.0, losses, subject=report)


def test_subject_cells_are_each_methods_report_and_differences_are_paired_against_masks():
    base = [0, 0, 0, 0, 1, 0, 0, 0]
    table = build_table([_result("masks", base, [1, 0, 1, 0, 1, 0, 0, 0]),
                         _result("lora", base, [1, 1, 1, 1, 1, 1, 1, 0])])
    rows = {row["method"]: row for row in table.rows}
    assert rows["base"]["subject_subject"]["mean"] == 1 / 8
    assert (rows["masks"]["subject_subject"]["mean"], rows["lora"]["subject_subject"]["mean"]) == (3 / 8, 7 / 8)
    versus = table.versus_masks["lora"]
    assert versus["subject_subject"]["mean"] == 4 / 8 and versus["subject_subject"]["lo"] > 0
    assert versus["subject_background"]["mean"] == 0
    lines = format_table(table)
    assert "subject_anywhere" in lines[0] and "background" in lines[0]
    assert lines[-1].startswith("lora - masks") and "subject +0.50" in lines[-1] and "background +0.00" in lines[-1]
