"""The block path (a block's masks in one batched chain per weight shape, the default) against
the layer path (each layer computes its own mask when it runs, the reference): the same masks,
outputs, statistics and generator gradients."""
import pytest
import torch

from maskunet import MaskConfig
from maskunet.masked_ops import PreparedMask

from .conftest import make_masked, random_inputs

# Logits near 0 with a large per-sample code: about half the entries dropped, different per sample.
MIXED = MaskConfig(logit_bias=0.0, code_init_std=3.0)


def _run(masked, path: str, train: bool, selection_inputs=None):
    masked.mask_path = path
    masked.keep_last_masks = True
    masked.track_drop_probability = train
    masked.generator.zero_grad(set_to_none=True)
    x, t, c = selection_inputs or random_inputs(batch=3)
    if train:
        out = masked(x, t, c).sample
        loss = out.square().mean() + masked.expected_sparsity()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in masked.generator.named_parameters()}
    else:
        with torch.no_grad():
            out = masked(x, t, c).sample
        grads = {}
    return out.detach(), masked.last_masks(), masked.mask_stats(per_sample=True), grads


@pytest.mark.parametrize("selection", ["attn", "attn+conv"])
@pytest.mark.parametrize("train", [False, True])
def test_block_path_matches_the_layer_path(selection, train):
    masked, _ = make_masked(mask_config=MaskConfig(layers=selection, logit_bias=0.0, code_init_std=3.0))
    masked.stochastic = False  # the paths draw noise in different chunks; thresholds are comparable
    masked.train(train)
    batched = []
    prepare = masked._prepare_group
    masked._prepare_group = lambda *args: (batched.append(len(args[0])), prepare(*args))
    block = _run(masked, "block", train)
    assert sum(batched) == len(masked.masked_layers())  # every layer took the block path
    layer = _run(masked, "layer", train)
    assert sum(batched) == len(masked.masked_layers())  # and none on the layer path
    out_b, masks_b, stats_b, grads_b = block
    out_l, masks_l, stats_l, grads_l = layer
    assert masks_b.keys() == masks_l.keys()
    for name in masks_b:
        assert torch.equal(masks_b[name], masks_l[name]), name
    dropped = torch.stack([m.float().mean() for m in masks_b.values()]).mean()
    assert 0.2 < 1 - dropped < 0.8  # a test of masks that actually drop entries
    assert any(not torch.equal(m[0], m[1]) for m in masks_b.values())  # and differ per sample
    torch.testing.assert_close(out_b, out_l, atol=1e-5, rtol=1e-5)
    assert stats_b == stats_l if not train else stats_b["layers"].keys() == stats_l["layers"].keys()
    if train:
        assert stats_b["rho"] == pytest.approx(stats_l["rho"], rel=1e-5)
        assert grads_b.keys() == grads_l.keys()
        for name in grads_b:
            assert grads_b[name].abs().sum() > 0, name  # every generator parameter is reached
            torch.testing.assert_close(grads_b[name], grads_l[name], atol=1e-6, rtol=1e-4, msg=name)


def test_block_path_under_bf16_autocast_matches_the_layer_path():
    masked, _ = make_masked(mask_config=MIXED)
    masked.eval()
    x, t, c = random_inputs(batch=2)
    outs = {}
    for path in ("block", "layer"):
        masked.mask_path = path
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[path] = masked(x, t, c).sample
    assert outs["block"].dtype == torch.bfloat16
    torch.testing.assert_close(outs["block"], outs["layer"], atol=0, rtol=0)


def test_stochastic_block_masks_keep_the_expected_fraction():
    """Training-mode noise on the block path: the kept fraction follows sigmoid(L), as on the layer path."""
    masked, _ = make_masked(mask_config=MaskConfig(logit_bias=1.0, code_init_std=0.0))
    masked.train()
    masked.keep_last_masks = True
    x, t, c = random_inputs(batch=4)
    with torch.no_grad():
        masked(x, t, c)
    kept = torch.cat([m.flatten().float() for m in masked.last_masks().values()]).mean().item()
    # P(keep) = sigmoid(1 + b_in 0 + tiny) ~= 0.731 over ~10^5 entries.
    assert kept == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.01)


def test_a_prepared_mask_is_handed_over_once():
    mask = PreparedMask(torch.ones(1, 2, 2, dtype=torch.bool))
    mask.take()
    with pytest.raises(RuntimeError, match="already used"):
        mask.take()
