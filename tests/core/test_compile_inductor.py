"""Long tier: the masked tiny U-Net compiled by inductor (C++ code generation, about a minute
on 2 cores) trains and samples like eager: outputs and generator gradients within tolerance."""
import pytest
import torch

from maskunet import MaskConfig
from maskunet.compile import compile_module, is_compiled

from .conftest import make_masked, random_inputs

pytestmark = pytest.mark.long


def _step(model, x, t, c):
    model.generator.zero_grad(set_to_none=True)
    out = model(x, t, c).sample
    out.square().mean().backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in model.generator.parameters()])


def test_inductor_compiled_masked_unet_matches_eager_in_training_and_inference():
    config = MaskConfig(logit_bias=0.0, code_init_std=3.0)
    eager, _ = make_masked(mask_config=config)
    compiled, _ = make_masked(mask_config=config)
    for model in (eager, compiled):
        model.stochastic = False  # the same masks in both, so outputs are comparable
    compile_module(compiled.unet)
    x, t, c = random_inputs(batch=2)
    for _ in range(2):  # the second call runs the cached compiled graph
        out_c, grad_c = _step(compiled.train(), x, t, c)
        out_e, grad_e = _step(eager.train(), x, t, c)
        torch.testing.assert_close(out_c, out_e, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad_c, grad_e, atol=1e-6, rtol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x, t, c).sample, eager.eval()(x, t, c).sample,
                                   atol=1e-4, rtol=1e-4)
    assert is_compiled(compiled.unet)  # no fallback happened
