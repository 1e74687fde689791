"""train.method lora | full: the paper's baselines on the same platform.

One Ray Train run per engine path, each checked for several things: LoRA (ZeRO-2) trains,
resumes from its checkpoint, exports a diffusers LoRA file that reloads and generates;
full fine-tuning under ZeRO-3 with parameter and optimizer offload gives DDP's loss curve
(clipping off), and the DDP run resumes, exports a diffusers U-Net folder and registers it.
"""
import pytest
import torch

from maskunet_platform.config import ConfigError, load_job
from tests.train.conftest import LOCAL_JOB

TINY = ["train.steps=4", "train.checkpoint_every=2", "train.log_every=1", "train.eval.rows=8",
        "train.eval.batch_size=8", "data.deterministic=true"]


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


def _image(pipe, enabled: bool):
    pipe.masks_enabled = enabled
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=2.0, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images[0]


@pytest.mark.slow
def test_lora_trains_resumes_exports_and_generates(ray_local, make_job, tiny_base):
    from maskunet import MaskUNetPipeline
    from maskunet.baselines import load_lora_state, weights_kind
    from maskunet_platform.train.launcher import train_job
    from maskunet_platform.train.runs import plan_run

    lora = ["train.method=lora", "train.lora.rank=2", "train.lora.alpha=4", "train.lr=5e-2"]
    first = train_job(make_job("lora", *TINY, *lora), finalize=False)
    longer = make_job("lora", *TINY, *lora, "train.steps=6")
    second = train_job(longer, plan=plan_run(longer, resume=first.run_name))
    assert (second.metrics["resumed_from_step"], second.metrics["step"]) == (4, 6)  # continued, not restarted
    assert second.generator_dir.endswith("/lora") and weights_kind(second.generator_dir) == "lora"
    state = load_lora_state(second.generator_dir)
    assert sum(v.numel() for v in state.values()) == second.metrics["train/trainable_params"]
    assert any(v.abs().sum() > 0 for k, v in state.items() if ".lora_B." in k)  # the up-projection trained
    assert second.eval["eval/rows"] == 8 and second.eval["eval/masked_loss_overall"] != second.eval[
        "eval/base_loss_overall"]
    pipe = MaskUNetPipeline.from_base(tiny_base, masks=second.generator_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.peft_config["default"].lora_alpha == 4  # rank/alpha come back from the file's metadata
    tuned, plain = _image(pipe, True), _image(pipe, False)
    assert tuned.shape == (32, 32, 3) and not (tuned == plain).all()


@pytest.mark.slow
def test_full_zero3_offload_matches_ddp_then_resumes_exports_registers(ray_local, mlflow_server, make_job,
                                                                        tiny_base):
    from mlflow import MlflowClient

    from maskunet import MaskUNetPipeline
    from maskunet.baselines import weights_kind
    from maskunet_platform.train.launcher import train_job
    from maskunet_platform.train.runs import plan_run

    full = [*TINY, "train.method=full", "train.lr=1e-3", "train.deepspeed.gradient_clipping=0"]
    uri = mlflow_server.tracking_uri
    zero3 = train_job(make_job("full-z3", *full, "train.deepspeed.zero_stage=3", "train.deepspeed.offload_param=cpu",
                               "train.deepspeed.offload_optimizer=cpu", tracking_uri=uri), finalize=False)
    ddp = train_job(make_job("full-ddp", *full, "train.deepspeed.enabled=false", tracking_uri=uri), finalize=False)
    client = MlflowClient(uri)
    curves = [[m.value for m in sorted(client.get_metric_history(o.mlflow_run_id, "train/loss"), key=lambda m: m.step)]
              for o in (zero3, ddp)]
    assert len(curves[0]) == 4 and len(set(curves[0])) == 4
    assert curves[0] == pytest.approx(curves[1], rel=1e-4, abs=1e-6)  # partitioned + offloaded AdamW = DDP's
    n_params = sum(p.numel() for p in _unet(tiny_base).parameters())
    assert zero3.metrics["train/trainable_params"] == ddp.metrics["train/trainable_params"] == n_params

    longer = make_job("full-ddp", *full, "train.deepspeed.enabled=false", "train.steps=6", tracking_uri=uri)
    more = train_job(longer, plan=plan_run(longer, resume=ddp.run_name))
    assert (more.metrics["resumed_from_step"], more.metrics["step"]) == (4, 6)
    assert more.generator_dir.endswith("/unet") and weights_kind(more.generator_dir) == "full"
    assert more.model_version is not None
    artifacts = [a.path for a in client.list_artifacts(more.mlflow_run_id)]
    assert "unet" in artifacts and "mask_generator" not in artifacts
    pipe = MaskUNetPipeline.from_base(tiny_base, masks=more.generator_dir)
    pipe.set_progress_bar_config(disable=True)
    tuned, plain = _image(pipe, True), _image(pipe, False)
    assert not (tuned == plain).all()
