"""The metric window: per-bucket losses accumulated on the losses' device, read back once per
log step, with per-rank values gathered in the same reduction."""
import pytest
import torch

from maskunet_platform.train.metrics import MetricWindow, gather_per_rank


def test_window_sums_by_timestep_bucket_and_returns_per_rank_values():
    window = MetricWindow(buckets=4, num_train_timesteps=1000)
    window.add(torch.tensor([1.0, 3.0]), torch.tensor([10, 990]))
    window.add(torch.tensor([2.0]), torch.tensor([260]))
    window.add_step()
    metrics = window.reduce({"rng/fingerprint": 0.25}, rank=0, world_size=1)
    assert metrics["train/loss"] == pytest.approx(2.0)
    assert metrics["train/loss_t0000_0249"] == 1.0 and metrics["train/loss_t0750_0999"] == 3.0
    assert metrics["train/loss_t0250_0499"] == 2.0 and "train/loss_t0500_0749" not in metrics
    assert metrics["rng/fingerprint_rank0"] == 0.25
    window.reset()
    assert window.reduce()["train/loss"] == 0.0  # a fresh window
    assert gather_per_rank({"a": 0.5, "b": 2.0}, rank=0, world_size=1) == {"a_rank0": 0.5, "b_rank0": 2.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adding_to_the_window_never_waits_for_the_gpu():
    window = MetricWindow(buckets=4, num_train_timesteps=1000)
    losses, timesteps = torch.rand(8, device="cuda"), torch.randint(0, 1000, (8,), device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        for _ in range(3):
            window.add(losses, timesteps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert window.sums.device.type == "cuda"
    assert window.reduce()["train/loss"] == pytest.approx(losses.mean().item(), rel=1e-6)
