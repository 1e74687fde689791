"""model.compile: the masked U-Net traced by TorchDynamo whole (no graph break: the block
hooks, prepared masks and the masked autograd function all inside one graph) gives eager's
outputs; a compiler failure falls back to eager with one warning; `off` never compiles.
Inductor itself (about a minute on 2 cores) is in the long tier: tests/core/test_compile_inductor.py."""
import logging

import pytest
import torch

from maskunet import MaskConfig
from maskunet.compile import compile_module, compile_wanted, is_compiled

from .conftest import make_masked, random_inputs

MIXED = MaskConfig(logit_bias=0.0, code_init_std=3.0)  # masks that drop about half, per sample


def test_compile_setting_per_device():
    assert [compile_wanted(s, "cpu") for s in ("auto", "on", "off")] == [False, True, False]
    assert [compile_wanted(s, "cuda") for s in ("auto", "on", "off")] == [True, True, False]
    with pytest.raises(ValueError, match="model.compile: 'yes'"):
        compile_wanted("yes", "cpu")


def test_traced_masked_unet_is_one_graph_with_eagers_outputs():
    eager, _ = make_masked(mask_config=MIXED)
    traced, _ = make_masked(mask_config=MIXED)
    for model in (eager, traced):
        model.eval()
    compile_module(traced.unet, backend="eager")  # Dynamo's capture, no code generation
    torch._dynamo.utils.counters.clear()
    x, t, c = random_inputs(batch=2)
    with torch.no_grad():
        want, got = eager(x, t, c).sample, traced(x, t, c).sample
    assert is_compiled(traced.unet)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert all(layer.mask is None for _, layer in traced.masked_layers())  # released as in eager


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(caplog):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    eager, _ = make_masked(mask_config=MIXED)
    model, _ = make_masked(mask_config=MIXED)
    model.eval()
    compile_module(model.unet, backend=failing_backend)
    x, t, c = random_inputs(batch=2)
    with caplog.at_level(logging.WARNING, logger="maskunet.compile"), torch.no_grad():
        outputs = [model(x, t, c).sample for _ in range(2)]
        want = eager.eval()(x, t, c).sample
    warnings = [r.getMessage() for r in caplog.records if r.name == "maskunet.compile"]
    assert len(warnings) == 1 and "no C++ compiler on this machine" in warnings[0], warnings
    assert not is_compiled(model.unet)
    for got in outputs:
        torch.testing.assert_close(got, want, atol=0, rtol=0)
