"""Mixed precision with the real DeepSpeed engine (ZeRO-2, in-process, a gloo group of one):
the frozen U-Net runs in bf16/fp16 while the mask generator, its logits and gradients stay
fp32 at the SD1.5 logit scale (logit_bias 5), and fp16's loss scale skips overflowing steps."""
import pytest
import torch

from maskunet_platform.config import ConfigError, load_job
from maskunet_platform.config.train import TrainSection
from tests.train.conftest import LOCAL_JOB


def _masked_tiny_unet(dtype: torch.dtype, seed: int = 0):
    from diffusers import UNet2DConditionModel

    from maskunet import MaskConfig, MaskedUNet, MaskGenerator
    from maskunet.tiny import TINY_UNET

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).to(dtype)  # the frozen base in low precision
    generator = MaskGenerator.from_unet(unet, MaskConfig(logit_bias=5.0))  # SD1.5's logit scale
    return MaskedUNet(unet, generator).train()


def _engine(masked, precision: str, **train):
    from maskunet_platform.train.engine import build_engine

    # use_gpu only lets the config accept fp16; the engine itself runs on CPU here.
    section = TrainSection.model_validate({"precision": precision, "use_gpu": precision == "fp16", "lr": 1e-3,
                                           "deepspeed": {"zero_stage": 2, "gradient_clipping": 0.0}, **train})
    return build_engine(masked, section, micro_batch=2, world_size=1, device=torch.device("cpu"))


def _batch(dtype: torch.dtype, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g).to(dtype), torch.tensor([10, 900]),
            torch.randn(2, 77, 32, generator=g).to(dtype))


def _capture_logits(masked) -> dict[str, tuple[torch.Tensor, int]]:
    """Each layer's logits, as (its shape group's (L, B, out, fan_in) logits, its row), with the
    group's gradient retained: read them after backward."""
    seen: dict[str, tuple[torch.Tensor, int]] = {}
    record_group = masked._record_group

    def record(names, logits, hard):
        logits.retain_grad()
        seen.update({name: (logits, row) for row, name in enumerate(names)})
        record_group(names, logits, hard)

    masked._record_group = record
    return seen


def test_generator_stays_fp32_with_gradients_under_bf16_zero2(gloo_group):
    from deepspeed.utils import safe_get_full_grad

    masked = _masked_tiny_unet(torch.bfloat16)
    engine = _engine(masked, "bf16")
    generator = masked.generator
    assert not engine.ds_engine.bfloat16_enabled() and not engine.ds_engine.fp16_enabled()
    assert {p.dtype for p in generator.parameters()} == {torch.float32}, "DeepSpeed cast the generator"
    assert {p.dtype for p in masked.unet.parameters()} == {torch.bfloat16}
    logits = _capture_logits(masked)
    sample, timesteps, states = _batch(torch.bfloat16)
    out = engine.forward_module(sample, timesteps, states).sample
    assert out.dtype == torch.bfloat16
    engine.backward(out.float().pow(2).mean())

    assert logits and {group.dtype for group, _ in logits.values()} == {torch.float32}
    # bf16 logits near +5 gave ~22% exactly-zero entries (sigmoid rounds to 1); fp32 keeps them.
    for name, (group, row) in logits.items():
        assert group[row].mean().item() == pytest.approx(5.0, abs=0.5), name
        grad = group.grad[row]
        assert grad.dtype == torch.float32 and (grad == 0).float().mean().item() < 0.01, name
    for name, param in generator.named_parameters():
        grad = safe_get_full_grad(param)
        assert grad is not None and grad.dtype == torch.float32, name
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{name} gets no gradient"
        if name.startswith("adapters.") or ".time_proj." in name:  # dense paths: every entry
            assert (grad != 0).all(), f"{name}: {(grad == 0).float().mean().item():.2%} zero entries"
    assert engine.step() and engine.skipped_steps == 0


def _fp16_step(engine, batch) -> bool:
    out = engine.forward_module(*batch).sample
    engine.backward(out.float().pow(2).mean())
    return engine.step()


def test_fp16_loss_scale_is_unscaled_before_the_update(gloo_group):
    batch = _batch(torch.float16)
    norms = []
    for power in (2, 12):
        engine = _engine(_masked_tiny_unet(torch.float16), "fp16", loss_scaling={"initial_scale_power": power})
        assert engine.ds_engine.optimizer.loss_scale == 2.0**power  # engine.backward scales the loss by it
        assert _fp16_step(engine, batch)
        norms.append(float(engine.ds_engine.get_global_grad_norm()))
    # Same weights and batch: the gradient the optimizer sees does not depend on the scale.
    assert norms[0] > 0 and norms[1] == pytest.approx(norms[0], rel=1e-2)


def test_fp16_overflow_steps_are_skipped_not_counted(gloo_group):
    masked = _masked_tiny_unet(torch.float16)
    engine = _engine(masked, "fp16", loss_scaling={"initial_scale_power": 10, "growth_interval": 2})
    generator, batch = masked.generator, _batch(torch.float16)
    assert {p.dtype for p in generator.parameters()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in generator.named_parameters()}
    engine.loss_scale.scale = 2.0**120  # the fp16 U-Net's scaled gradients overflow
    engine.apply_loss_scale()
    assert not _fp16_step(engine, batch), "an overflowing fp16 step must be skipped, not counted"
    assert engine.skipped_steps == 1 and engine.loss_scale.scale == 2.0**119
    assert engine.lr_scheduler.last_epoch == 0  # no lr-scheduler step either
    for name, param in generator.named_parameters():
        assert torch.equal(param, before[name]), f"{name} changed in a skipped step"
    engine.loss_scale.scale = 2.0**4
    engine.apply_loss_scale()
    assert _fp16_step(engine, batch) and _fp16_step(engine, batch)
    # Two applied steps in a row (growth_interval 2): the scale doubled, in DeepSpeed too.
    assert engine.loss_scale.scale == 2.0**5 and engine.ds_engine.optimizer.loss_scale == 2.0**5
    assert engine.skipped_steps == 1 and engine.lr_scheduler.last_epoch == 2
    assert any(not torch.equal(p, before[n]) for n, p in generator.named_parameters())


@pytest.mark.parametrize("override, field", [
    ("train.deepspeed.extra={bf16: {enabled: true}}", "train.deepspeed"),
    ("train.deepspeed.extra={torch_autocast: {enabled: true}}", "train.deepspeed"),
])
def test_deepspeed_mixed_precision_modes_are_refused(override, field):
    with pytest.raises(ConfigError) as err:
        load_job(LOCAL_JOB, [override])
    assert field in str(err.value) and "train.precision" in str(err.value)


def test_fp16_needs_a_zero_optimizer():
    with pytest.raises(ConfigError, match="zero_stage"):
        load_job(LOCAL_JOB, ["train.use_gpu=true", "train.backend=nccl", "train.precision=fp16",
                             "train.deepspeed.zero_stage=0"])


def test_masks_train_under_zero3_through_the_layer_path(gloo_group):
    """ZeRO-3 partitions the generator and gathers an adapter's parameters only around its own
    forward, so the block path (which reads them directly) steps aside: every generator
    parameter still gets a gradient and the step is taken."""
    from deepspeed.utils import safe_get_full_grad

    masked = _masked_tiny_unet(torch.float32)
    engine = _engine(masked, "fp32", deepspeed={"zero_stage": 3, "gradient_clipping": 0.0})
    assert masked._partitioned()
    sample, timesteps, states = _batch(torch.float32)
    engine.backward(engine.forward_module(sample, timesteps, states).sample.pow(2).mean())
    for name, param in masked.generator.named_parameters():
        grad = safe_get_full_grad(param)
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient"
    assert engine.step()
