"""Subject-driven (DreamBooth-style) masks: `maskunet train -c jobs/subject-local.yaml`.

One small end-to-end run as a real process on the embedded store: the sample subject folder
is written, the base draws the class images, masks train under Ray Train on 2 workers
(ZeRO-2), and the report (summary rows, JSON beside the export, MLflow metrics and artifacts)
says how often the subject appears in new contexts, base vs masked, paired. Config and
input errors are checked without training.
"""
import json
from pathlib import Path

import pytest

from maskunet_platform.config import ConfigError, load_job
from tests.fixtures.cli import assert_plain_console, maskunet_env, run_maskunet, summary_value
from tests.train.conftest import REPO

SUBJECT_JOB = REPO / "jobs" / "subject-local.yaml"
PROMPTS = 4


@pytest.mark.parametrize("override, field", [
    ("data.subject.instance_promt=x", "data.subject.instance_promt"),
    ("data.subject.prior_loss_weight=0", "data.subject.prior_loss_weight"),
    ("data.subject.report.template=a sks circle", "data.subject.report.template"),
    ("data.holdout_fraction=0.1", "data.holdout_fraction"),
    ("data.source=s3://bucket/subject", "data.source"),
])
def test_subject_fields_are_validated(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_job(SUBJECT_JOB, [override])


def _bad_subject_folder(folder: Path, case: str) -> str:
    """A subject folder with one defect; returns what the error must say."""
    from PIL import Image

    folder.mkdir()
    if case == "empty":
        return "has no images"
    Image.new("RGB", (96, 96), "purple").save(folder / "subject-00.png")
    if case == "not an image":
        (folder / "subject-01.png").write_bytes(b"this is a caption file, not a PNG")
        return "subject-01.png is not a readable image"
    Image.new("RGB", (48, 80), "purple").save(folder / "subject-01.png")  # data.resolution is 64
    return "subject-01.png is 48x80"


@pytest.mark.parametrize("case", ["empty", "not an image", "too small"])
def test_a_bad_subject_folder_is_invalid_input(shapes_base, tmp_path, case):
    expected = _bad_subject_folder(tmp_path / "subject", case)
    result = run_maskunet(["train", "-c", str(SUBJECT_JOB), "--set", f"model.base={shapes_base}",
                           "--set", f"data.source={tmp_path / 'subject'}", "--set", f"train.export_dir={tmp_path / 'x'}",
                           "--set", f"train.storage_path={tmp_path / 'runs'}",
                           "--set", f"tracking.local_store={tmp_path / 'mlflow'}"], maskunet_env(), timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.source" in errors[0] and expected in errors[0], result.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything started


def test_a_subject_folder_ignores_other_files_and_accepts_large_images(tmp_path):
    from PIL import Image

    from maskunet_platform.subject.data import instance_images

    (tmp_path / "notes.txt").write_text("four photos of the product")
    for i, size in enumerate([(64, 64), (300, 200)]):
        Image.new("RGB", size, "purple").save(tmp_path / f"subject-{i}.jpg")
    assert [p.name for p in instance_images(str(tmp_path), 64)] == ["subject-0.jpg", "subject-1.jpg"]


def _subject_run(shapes_base, root: Path, method: str, steps: int):
    overrides = [f"model.base={shapes_base}", f"data.source={root / 'subject'}", f"train.storage_path={root / 'runs'}",
                 f"train.export_dir={root / 'exports'}", f"tracking.local_store={root / 'mlflow'}",
                 f"train.method={method}", "train.cpus_per_worker=0.5", f"train.steps={steps}", "train.log_every=1",
                 f"train.checkpoint_every={steps}", "data.batch_size=4", "data.subject.instance_rows=16",
                 "data.subject.num_class_images=4", "data.subject.class_steps=2",
                 f"data.subject.report.prompts={PROMPTS}", "data.subject.report.steps=2", "train.eval.rows=8",
                 "tracking.log_samples=false", "tracking.register_model=false"]
    args = [arg for item in overrides for arg in ("--set", item)]
    result = run_maskunet(["train", "-c", str(SUBJECT_JOB), *args], maskunet_env(), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def subject_run(shapes_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("subject")
    return _subject_run(shapes_base, root, "masks", steps=2), root


def _report_of(result) -> tuple[dict, Path]:
    path = Path(summary_value(result.stdout, "subject").rsplit("(", 1)[1].rstrip(")"))
    return json.loads(path.read_text()), path


@pytest.mark.slow
@pytest.mark.long
def test_subject_job_trains_and_reports_appearance(subject_run):
    from mlflow import MlflowClient

    result, root = subject_run
    assert_plain_console(result)
    out = result.stdout
    assert sorted(p.name for p in (root / "subject").iterdir()) == [f"subject-0{i}.png" for i in range(4)]
    for stage in ("subject data (4 images + 4 class images) done", "evaluate + subject report done"):
        assert stage in out, (stage, out)
    assert "subject-data loss:" in out and "held-out loss:" not in out
    assert "subject:" in out and "masks - base (paired)" in out
    # The prepared data: instance rows (weight 1) and class rows drawn by the base (prior_loss_weight).
    prepared = next((root / "runs" / "subject-data").iterdir())
    marker = json.loads((prepared / "subject.json").read_text())
    assert marker["subject"] == {"colour": "purple", "kind": "circle"}
    assert (marker["instance_rows"], marker["class_images"]) == (16, 4)
    assert sorted({tuple(c) for c in marker["contexts"]}) == [("white", 1, 1)]
    report, report_path = _report_of(result)
    assert report["method"] == "masks" and report["items"] == PROMPTS and len(set(report["prompts"])) == PROMPTS
    assert all("sks circle" in p and "in the center on a white background" not in p for p in report["prompts"])
    for model in ("base", "masked"):
        for category in ("subject", "subject_anywhere", "background"):
            s = report["results"][model][category]
            assert s["n"] == PROMPTS and 0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1
    d = report["difference"]["subject"]
    assert d["n"] == PROMPTS and -1 <= d["lo"] <= d["mean"] <= d["hi"] <= 1
    assert (report_path.parent / "subject_report.png").stat().st_size > 0
    run_id = summary_value(out, "mlflow run").split()[0]
    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    metrics = client.get_run(run_id).data.metrics
    assert metrics["subject/items"] == PROMPTS
    assert metrics["subject/masked/subject"] == report["results"]["masked"]["subject"]["mean"]
    assert {"subject_report.json", "subject_report.png"} <= {a.path for a in client.list_artifacts(run_id)}
    assert client.get_run(run_id).data.params["data.source"] == str(prepared)


@pytest.mark.slow
@pytest.mark.long
def test_dreambooth_lora_writes_the_same_report(subject_run, shapes_base):
    """DreamBooth-LoRA on the same instance and class images (the prepared data is reused: same
    digest), 3 steps: a report with the masks' keys, so the table has one row per method."""
    masks_result, root = subject_run
    result = _subject_run(shapes_base, root, "lora", steps=3)
    assert "subject data (" not in result.stdout  # the masks run's prepared data, not drawn again
    assert "LoRA - base (paired)" in result.stdout and "-> LoRA " in result.stdout
    report, path = _report_of(result)
    masks_report, _ = _report_of(masks_result)
    assert report["method"] == "lora" and report["prompts"] == masks_report["prompts"]

    def keys(r: dict) -> dict:
        return {k: sorted(v) if isinstance(v, dict) else None for k, v in r.items()} | {
            f"{k}.{m}": sorted(r[k][m]) for k in ("results", "difference", "scores") for m in r[k]
            if isinstance(r[k][m], dict)}

    assert keys(report) == keys(masks_report)
    assert len(report["scores"]["masked"]) == PROMPTS and set(report["scores"]["base"][0]) == set(report["categories"])
    assert (path.parent / "subject_report.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.long
def test_compare_on_a_subject_job_has_a_subject_row_per_method(shapes_base, tmp_path):
    """`maskunet compare -c jobs/compare-subject.yaml`: masks, DreamBooth-LoRA and full DreamBooth
    on one prepared data set; the table's subject cells are each method's report, paired."""
    from PIL import Image

    overrides = [f"model.base={shapes_base}", f"data.source={tmp_path / 'subject'}",
                 f"train.storage_path={tmp_path / 'runs'}", f"train.export_dir={tmp_path / 'exports'}",
                 f"tracking.local_store={tmp_path / 'mlflow'}", f"compare.out_dir={tmp_path / 'compare'}",
                 "train.cpus_per_worker=0.5", "train.steps=2", "train.checkpoint_every=2", "data.batch_size=4",
                 "data.subject.instance_rows=8", "data.subject.num_class_images=4", "data.subject.class_steps=2",
                 f"data.subject.report.prompts={PROMPTS}", "data.subject.report.seeds=1",
                 "data.subject.report.steps=2", "train.eval.rows=8", "compare.grid_steps=2"]
    args = [arg for item in overrides for arg in ("--set", item)]
    result = run_maskunet(["compare", "-c", str(REPO / "jobs" / "compare-subject.yaml"), "--json", *args],
                          maskunet_env(), timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    rows = {row["method"]: row for row in out["rows"]}
    assert list(rows) == ["base", "masks", "lora", "full"]
    for row in rows.values():
        for category in ("subject", "subject_anywhere", "background"):
            cell = row[f"subject_{category}"]
            assert cell["n"] == PROMPTS and 0 <= cell["lo"] <= cell["mean"] <= cell["hi"] <= 1
    assert set(out["versus_masks"]) == {"lora", "full"}
    assert {"loss", "subject_subject", "subject_background"} <= set(out["versus_masks"]["lora"])
    assert len(list((tmp_path / "runs" / "subject-data").iterdir())) == 1  # drawn once, shared
    grid = Image.open(out["grid"])  # base + 3 methods per new-context prompt
    side = (grid.width - 200) // 4
    assert grid.height == 16 + PROMPTS * side
