"""train.method masks | lora | full and `maskunet compare`, with as few Ray Train runs as possible.

One comparison on the embedded default (jobs/compare-local.yaml) at a tiny budget trains every
method under Ray Train on 2 workers (LoRA on ZeRO-2, full fine-tuning on ZeRO-3 with parameter
and optimizer offload), evaluates them paired and draws the grid (every export reloads and
generates). Two more runs reuse it: the full fine-tune again on plain DDP (same loss curve,
clipping off), and the LoRA run extended from its checkpoint (resume).
"""
import json
from pathlib import Path

import pytest
import torch

from maskunet_platform.config import ConfigError, load_job
from tests.fixtures.cli import maskunet_env, run_maskunet
from tests.train.conftest import LOCAL_JOB, REPO

COMPARE_JOB = REPO / "jobs" / "compare-local.yaml"
STEPS = 3


def _unet(base):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(base, subfolder="unet")


def _inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(3, unet.config.in_channels, 8, 8, generator=g)
    states = torch.randn(3, 77, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor([1, 400, 999]), states


def test_lora_at_step_0_is_the_base_and_trainable_counts_fit(tiny_base, make_job):
    from maskunet.layers import select_layers
    from maskunet_platform.train.methods import build_trainee

    plain = _unet(tiny_base)
    counts = {}
    for method in ("lora", "full"):
        unet = _unet(tiny_base)
        trainee = build_trainee(make_job(f"count-{method}", f"train.method={method}", "train.lora.rank=3"),
                                unet, torch.device("cpu"))
        counts[method] = trainee.trainable_count
        if method == "lora":
            # The adapter covers exactly the masks' layers; PEFT zero-initialises the up-projection.
            targets = [name for group in select_layers(plain, "attn").values() for name, _ in group]
            assert sorted(targets) == sorted(
                name.rsplit(".lora_A", 1)[0] for name, _ in trainee.trained_parameters() if ".lora_A." in name)
            modules = dict(plain.named_modules())
            assert counts["lora"] == sum(3 * (modules[t].in_features + modules[t].out_features) for t in targets)
            assert all(p.abs().sum() == 0 for n, p in trainee.trained_parameters() if ".lora_B." in n)
            assert any(p.abs().sum() > 0 for n, p in trainee.trained_parameters() if ".lora_A." in n)
            with torch.no_grad():
                for seed in range(2):
                    assert torch.equal(unet(*_inputs(unet, seed)).sample, plain(*_inputs(plain, seed)).sample)
    assert counts["full"] == sum(p.numel() for p in plain.parameters())
    assert 0 < counts["lora"] < counts["full"]


def test_method_fields_are_validated():
    with pytest.raises(ConfigError, match=r"train\.method"):
        load_job(LOCAL_JOB, ["train.method=adapter"])
    with pytest.raises(ConfigError, match="precision fp32"):
        load_job(LOCAL_JOB, ["train.method=full", "train.precision=bf16"])
    with pytest.raises(ConfigError, match=r"train\.lora\.rank"):
        load_job(LOCAL_JOB, ["train.method=lora", "train.lora.rank=0"])


def test_compare_entries_name_a_method_and_optionally_its_objective():
    from maskunet_platform.compare.runner import method_job

    job = load_job(COMPARE_JOB, ["compare.methods=[masks, masks:reward, lora:reward]",
                                 "compare.overrides={lora:reward: [train.lr=0.001]}"])
    chosen = {m: method_job(job, m) for m in job.compare.methods}
    assert {m: (j.train.method, j.train.objective) for m, j in chosen.items()} == {
        "masks": ("masks", "denoise"), "masks:reward": ("masks", "reward"), "lora:reward": ("lora", "reward")}
    assert chosen["lora:reward"].train.lr == 0.001 and chosen["masks:reward"].train.lr == job.train.lr
    assert len({j.name for j in chosen.values()}) == 3
    for bad, named in (("[masks, masks:fancy]", "'masks:fancy'"), ("[adapter:reward]", "'adapter:reward'")):
        with pytest.raises(ConfigError, match=named):
            load_job(COMPARE_JOB, [f"compare.methods={bad}"])
    with pytest.raises(ConfigError, match="train.objective=reward"):
        load_job(COMPARE_JOB, ["compare.overrides={masks: [train.objective=reward]}"])


def test_compare_rejects_overrides_of_the_shared_budget():
    result = run_maskunet(["compare", "-c", str(COMPARE_JOB), "--set", "compare.overrides.lora=[train.steps=99]"],
                          maskunet_env(), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "compare.overrides" in result.stderr and "train.steps=99" in result.stderr


@pytest.fixture(scope="module")
def compare_run(ray_local, mlflow_server, shapes_base, train_data, tmp_path_factory):
    """The embedded default comparison at a tiny budget; clipping off and a fixed row order so
    its full fine-tune doubles as the ZeRO-3 side of the DDP parity check."""
    from maskunet_platform.compare.runner import run_compare

    tmp = tmp_path_factory.mktemp("compare")
    job = load_job(COMPARE_JOB, [
        f"model.base={shapes_base}", f"data.source={train_data}", f"train.storage_path={tmp / 'runs'}",
        f"train.export_dir={tmp / 'exports'}", "train.cpus_per_worker=0.5", f"train.steps={STEPS}",
        # 3 steps at the job's gentle mask settings (bias 3, lr 1e-2) leave every logit above 0;
        # bias 2 and lr 2e-2 (masks only: lora and full keep their own lr) move some below it.
        "mask.logit_bias=2.0", "train.lr=2e-2",
        "train.log_every=1", "train.warmup_steps=0", "train.deepspeed.gradient_clipping=0", "data.deterministic=true",
        "train.eval.rows=8", "train.eval.shapes.prompts=4", "train.eval.shapes.steps=3",
        f"tracking.tracking_uri={mlflow_server.tracking_uri}", "compare.grid_prompts=[a red circle, a blue square]",
        "compare.grid_steps=2", f"compare.out_dir={tmp}"])
    return job, run_compare(job)


@pytest.mark.slow
@pytest.mark.long
def test_compare_table_grid_counts_and_mlflow(compare_run, mlflow_server):
    from diffusers import UNet2DConditionModel
    from mlflow import MlflowClient
    from PIL import Image

    from maskunet import MaskGenerator
    from maskunet.baselines import load_lora_state, weights_kind

    _, outcome = compare_run
    rows = {row["method"]: row for row in outcome.table.rows}
    assert list(rows) == ["base", "masks", "lora", "full"]
    weights = {r.method: r.weights_dir for r in outcome.results}
    assert {m: weights_kind(d) for m, d in weights.items()} == {"masks": "masks", "lora": "lora", "full": "full"}
    expected = {"masks": sum(p.numel() for p in MaskGenerator.from_pretrained(weights["masks"]).parameters()),
                "lora": sum(v.numel() for v in load_lora_state(weights["lora"]).values()),
                "full": sum(p.numel() for p in UNet2DConditionModel.from_pretrained(weights["full"]).parameters())}
    assert {m: rows[m]["trainable_params"] for m in expected} == expected
    assert expected["lora"] < expected["masks"] < expected["full"]
    for method in ("base", "masks", "lora", "full"):
        loss = rows[method]["heldout_loss"]
        assert loss["n"] == 8 and loss["lo"] <= loss["mean"] <= loss["hi"]
        assert 0 <= rows[method]["shapes_colour"]["mean"] <= 1 and rows[method]["shapes_kid"] is not None
    # Every method moved away from the base on the same held-out rows (paired).
    assert len({round(rows[m]["heldout_loss"]["mean"], 9) for m in rows}) == 4
    assert rows["full"]["peak_memory_mb"] > 0 and rows["lora"]["images_per_s"] > 0
    assert set(outcome.table.versus_masks) == {"lora", "full"}
    assert "loss" in outcome.table.versus_masks["lora"] and "colour" in outcome.table.versus_masks["full"]

    grid = Image.open(outcome.grid_path)  # a caption column, then base + 3 methods; 2 prompts
    side = (grid.width - 200) // 4
    assert grid.width == 200 + 4 * side and grid.height == 16 + 2 * side
    saved = json.loads((outcome.out_dir / "table.json").read_text())
    assert [r["method"] for r in saved["rows"]] == list(rows)
    client = MlflowClient(mlflow_server.tracking_uri)
    assert client.get_run(outcome.mlflow_run_id).data.metrics["full/trainable_params"] == expected["full"]
    assert {a.path for a in client.list_artifacts(outcome.mlflow_run_id)} >= {"grid.png", "table.json", "table.txt"}


@pytest.mark.slow
@pytest.mark.long
def test_full_zero3_offload_matches_ddp(compare_run, mlflow_server):
    from mlflow import MlflowClient

    from maskunet_platform.compare.runner import method_job
    from maskunet_platform.config import apply_overrides
    from maskunet_platform.config.job import JobConfig
    from maskunet_platform.train.launcher import train_job

    job, outcome = compare_run
    zero3 = next(r for r in outcome.results if r.method == "full")
    full = method_job(job, "full")
    assert (full.train.deepspeed.zero_stage, full.train.deepspeed.offload_param,
            full.train.deepspeed.offload_optimizer) == (3, "cpu", "cpu")
    raw = apply_overrides(full.model_dump(mode="json"), ["name=full-ddp", "train.deepspeed.enabled=false"])
    ddp = train_job(JobConfig.model_validate(raw), finalize=False)
    client = MlflowClient(mlflow_server.tracking_uri)
    curves = [[m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]
              for run_id in (zero3.mlflow_run_id, ddp.mlflow_run_id)]
    assert len(curves[0]) == STEPS and len(set(curves[0])) == STEPS
    assert curves[0] == pytest.approx(curves[1], rel=1e-4, abs=1e-6)  # partitioned + offloaded AdamW = DDP's
    assert ddp.metrics["train/trainable_params"] == zero3.trainable_params


def _image(pipe, enabled: bool):
    pipe.masks_enabled = enabled
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=2.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images[0]


@pytest.mark.slow
@pytest.mark.long
def test_lora_resumes_from_its_checkpoint_and_the_export_generates(compare_run):
    from maskunet import MaskUNetPipeline
    from maskunet.baselines import load_lora_state
    from maskunet_platform.compare.runner import method_job
    from maskunet_platform.config import apply_overrides
    from maskunet_platform.config.job import JobConfig
    from maskunet_platform.train.launcher import train_job
    from maskunet_platform.train.runs import plan_run

    job, outcome = compare_run
    first = next(r for r in outcome.results if r.method == "lora")
    longer = JobConfig.model_validate(apply_overrides(method_job(job, "lora").model_dump(mode="json"),
                                                      [f"train.steps={STEPS + 1}"]))
    before = load_lora_state(first.weights_dir)  # the extension exports to the same folder
    more = train_job(longer, plan=plan_run(longer, resume=first.run_name), finalize=False)
    assert (more.metrics["resumed_from_step"], more.metrics["step"]) == (STEPS, STEPS + 1)  # continued
    after = load_lora_state(more.generator_dir)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert any(v.abs().sum() > 0 for k, v in after.items() if ".lora_B." in k)  # the up-projection trained
    pipe = MaskUNetPipeline.from_base(longer.model.base, masks=Path(more.generator_dir).parent)  # the run's folder
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.peft_config["default"].r == longer.train.lora.rank  # rank/alpha from the file's metadata
    tuned, plain = _image(pipe, True), _image(pipe, False)
    assert not (tuned == plain).all()


def _unet_state(folder):
    from safetensors.torch import load_file

    (weights,) = sorted(Path(folder).glob("*.safetensors"))
    return load_file(str(weights))


@pytest.mark.slow
@pytest.mark.long
def test_full_resumes_from_its_zero3_checkpoint_and_the_export_generates(compare_run):
    """After the DDP parity check (which reads the ZeRO-3 run's loss curve before this extension
    logs one more step into it): the full fine-tune (ZeRO-3, parameter + optimizer offload)
    continues from its partitioned checkpoint, exports a U-Net folder, reloads and generates."""
    from maskunet import MaskUNetPipeline
    from maskunet_platform.compare.runner import method_job
    from maskunet_platform.config import apply_overrides
    from maskunet_platform.config.job import JobConfig
    from maskunet_platform.train.launcher import train_job
    from maskunet_platform.train.runs import plan_run

    job, outcome = compare_run
    first = next(r for r in outcome.results if r.method == "full")
    longer = JobConfig.model_validate(apply_overrides(method_job(job, "full").model_dump(mode="json"),
                                                      [f"train.steps={STEPS + 1}"]))
    assert (longer.train.deepspeed.zero_stage, longer.train.deepspeed.offload_param) == (3, "cpu")
    before = _unet_state(first.weights_dir)  # the extension exports to the same folder
    more = train_job(longer, plan=plan_run(longer, resume=first.run_name), finalize=False)
    assert (more.metrics["resumed_from_step"], more.metrics["step"]) == (STEPS, STEPS + 1)  # continued
    after = _unet_state(more.generator_dir)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    pipe = MaskUNetPipeline.from_base(longer.model.base, masks=Path(more.generator_dir).parent)  # the run's folder
    pipe.set_progress_bar_config(disable=True)
    tuned, plain = _image(pipe, True), _image(pipe, False)
    assert not (tuned == plain).all()


@pytest.mark.slow
@pytest.mark.long
def test_trained_lora_and_full_runs_register_gate_each_other_and_generate(compare_run, mlflow_server, tmp_path):
    """`train.method=lora` and `full` (3 steps), finalized like `maskunet train`: each version
    carries paired evidence, the gate weighs one method against the other on the same held-out
    rows and prompts (exit 3 when refused), and the champion and each run's export folder
    generate in fresh processes."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from maskunet_platform.cli import main
    from maskunet_platform.compare.runner import method_job
    from maskunet_platform.config import apply_overrides
    from maskunet_platform.config.job import JobConfig
    from maskunet_platform.registry.evidence import read_evidence
    from maskunet_platform.train.launcher import train_job

    job, _ = compare_run
    client, name, outcomes = MlflowClient(mlflow_server.tracking_uri), "trained-methods", {}
    for method in ("lora", "full"):
        raw = apply_overrides(method_job(job, method).model_dump(mode="json"),
                              [f"name=registered-{method}", "tracking.register_model=true",
                               f"tracking.registered_model_name={name}"])
        outcomes[method] = outcome = train_job(JobConfig.model_validate(raw))
        version = client.get_model_version(name, outcome.model_version)
        assert version.tags["method"] == method and read_evidence(version.tags, "heldout") is not None
    promote = lambda version: CliRunner().invoke(  # noqa: E731
        main, ["promote", name, "--version", version, "--tracking-uri", mlflow_server.tracking_uri, "--json"])
    first = promote(outcomes["lora"].model_version)
    assert first.exit_code == 0 and json.loads(first.stdout)["action"] == "promoted", first.output
    second = promote(outcomes["full"].model_version)
    report = json.loads(second.stdout)
    assert report["evidence"] == {"heldout": "logged", "shapes": "logged"}, report
    loss = next(c for c in report["checks"] if c["metric"] == "eval/masked_loss_overall")
    logged = {m: read_evidence(client.get_model_version(name, o.model_version).tags, "heldout").metrics
              for m, o in outcomes.items()}
    assert (loss["holder"], loss["challenger"]) == pytest.approx(
        (logged["lora"]["eval/masked_loss_overall"], logged["full"]["eval/masked_loss_overall"]))
    passed = all(c["passed"] for c in report["checks"])
    assert (second.exit_code, report["action"]) == ((0, "promoted") if passed else (3, "refused")), report
    env = maskunet_env(MLFLOW_TRACKING_URI=mlflow_server.tracking_uri)
    for weights in (["--model", f"models:/{name}@champion"],
                    *(["--base", job.model.base, "--weights", str(Path(o.generator_dir).parent)]
                      for o in outcomes.values())):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        done = run_maskunet(["generate", "a red circle", *weights, "--steps", "2", "--out", str(out)], env)
        assert done.returncode == 0 and out.stat().st_size > 100, done.stderr
