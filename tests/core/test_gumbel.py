import math

import torch

from maskunet import gumbel_sigmoid, keep_probability


def test_deterministic_mode_thresholds_logits_and_passes_sigmoid_gradient():
    logits = torch.tensor([-2.0, -0.1, 0.1, 3.0], requires_grad=True)
    mask = gumbel_sigmoid(logits, tau=1.0, threshold=0.5, stochastic=False)
    assert mask.tolist() == [0.0, 0.0, 1.0, 1.0]
    mask.sum().backward()
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, s * (1 - s))


def test_deterministic_threshold_moves_with_tau_and_delta():
    # keep iff L > tau * logit(delta); tau=2, delta=0.7 -> 2*logit(0.7) = 1.6946
    logits = torch.tensor([1.6, 1.8])
    assert gumbel_sigmoid(logits, tau=2.0, threshold=0.7, stochastic=False).tolist() == [0.0, 1.0]


def test_stochastic_keep_rate_matches_closed_form():
    torch.manual_seed(0)
    for tau, delta, logit in [(1.0, 0.5, 0.5), (2.0, 0.7, 1.0), (0.5, 0.3, -0.5)]:
        logits = torch.full((200_000,), logit)
        rate = gumbel_sigmoid(logits, tau=tau, threshold=delta).mean().item()
        expected = keep_probability(torch.tensor(logit), tau, delta).item()
        assert abs(rate - expected) < 0.005, (tau, delta, rate, expected)
    # with delta = 0.5 the keep probability ignores tau
    assert keep_probability(torch.tensor(0.3), 0.1, 0.5) == keep_probability(torch.tensor(0.3), 5.0, 0.5)
    assert math.isclose(keep_probability(torch.tensor(0.0), 1.0, 0.5).item(), 0.5)


def test_stochastic_mask_is_binary_with_nonzero_gradient():
    logits = torch.randn(1000, requires_grad=True)
    mask = gumbel_sigmoid(logits, tau=0.5)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    (mask * torch.arange(1.0, 1001.0)).sum().backward()
    assert (logits.grad != 0).float().mean() > 0.99  # exact zeros only where fp32 sigmoid saturates
