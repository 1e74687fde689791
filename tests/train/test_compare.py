"""`maskunet compare` on the embedded default (jobs/compare-local.yaml), at a tiny budget:
every method trains under Ray Train, is evaluated on the same paired rows and shapes prompts,
and lands in one table (with the right trainable-parameter counts), one grid and one MLflow run."""
import json

import pytest

from tests.fixtures.cli import maskunet_env, run_maskunet
from tests.train.conftest import REPO

COMPARE_JOB = REPO / "jobs" / "compare-local.yaml"


def test_compare_rejects_overrides_of_the_shared_budget():
    result = run_maskunet(["compare", "-c", str(COMPARE_JOB), "--set", "compare.overrides.lora=[train.steps=99]"],
                          maskunet_env(), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "compare.overrides" in result.stderr and "train.steps=99" in result.stderr


@pytest.mark.slow
def test_compare_embedded_default_table_grid_and_counts(ray_local, mlflow_server, shapes_base, train_data,
                                                         tmp_path):
    from diffusers import UNet2DConditionModel
    from mlflow import MlflowClient
    from PIL import Image

    from maskunet import MaskGenerator
    from maskunet.baselines import load_lora_state
    from maskunet_platform.compare.runner import run_compare
    from maskunet_platform.config import load_job

    job = load_job(COMPARE_JOB, [
        f"model.base={shapes_base}", f"data.source={train_data}", f"train.storage_path={tmp_path / 'runs'}",
        f"train.export_dir={tmp_path / 'exports'}", "train.cpus_per_worker=0.5", "train.steps=2",
        "train.checkpoint_every=2", "train.log_every=1", "train.warmup_steps=0", "train.eval.rows=8",
        "train.eval.shapes.prompts=4", "train.eval.shapes.steps=3", f"tracking.tracking_uri={mlflow_server.tracking_uri}",
        "compare.grid_prompts=[a red circle, a blue square]", "compare.grid_steps=2", f"compare.out_dir={tmp_path}"])
    outcome = run_compare(job)
    rows = {row["method"]: row for row in outcome.table.rows}
    assert list(rows) == ["base", "masks", "lora", "full"]
    weights = {r.method: r.weights_dir for r in outcome.results}
    expected = {"masks": sum(p.numel() for p in MaskGenerator.from_pretrained(weights["masks"]).parameters()),
                "lora": sum(v.numel() for v in load_lora_state(weights["lora"]).values()),
                "full": sum(p.numel() for p in UNet2DConditionModel.from_pretrained(weights["full"]).parameters())}
    assert {m: rows[m]["trainable_params"] for m in expected} == expected
    for method in ("base", "masks", "lora", "full"):
        loss = rows[method]["heldout_loss"]
        assert loss["n"] == 8 and loss["lo"] <= loss["mean"] <= loss["hi"]
        assert 0 <= rows[method]["shapes_color"]["mean"] <= 1 and rows[method]["shapes_kid"] is not None
    assert rows["full"]["peak_memory_mb"] > 0 and rows["lora"]["images_per_s"] > 0
    assert set(outcome.table.versus_masks) == {"lora", "full"}
    assert "loss" in outcome.table.versus_masks["lora"] and "color" in outcome.table.versus_masks["full"]

    grid = Image.open(outcome.grid_path)  # a caption column, then base + 3 methods; 2 prompts
    side = (grid.width - 200) // 4
    assert grid.width == 200 + 4 * side and grid.height == 16 + 2 * side
    saved = json.loads((outcome.out_dir / "table.json").read_text())
    assert [r["method"] for r in saved["rows"]] == list(rows)
    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.data.metrics["full/trainable_params"] == expected["full"]
    assert {a.path for a in client.list_artifacts(outcome.mlflow_run_id)} >= {"grid.png", "table.json", "table.txt"}
