"""Training metrics over a logging window, reduced across ranks."""
import time

import torch
import torch.distributed as dist


def bucket_of(timesteps: torch.Tensor, buckets: int, num_train_timesteps: int) -> torch.Tensor:
    """Timestep bucket index 0..buckets-1 (bucket 0 = least noise)."""
    return (timesteps.long().cpu() * buckets // num_train_timesteps).clamp(0, buckets - 1)


def bucket_names(buckets: int, num_train_timesteps: int) -> list[str]:
    edges = [round(i * num_train_timesteps / buckets) for i in range(buckets + 1)]
    return [f"t{edges[i]:04d}_{edges[i + 1] - 1:04d}" for i in range(buckets)]


def realised_sparsity(stats: dict) -> float:
    """Fraction of masked weight entries actually dropped in the last call (size-weighted)."""
    layers = stats["layers"].values()
    total = sum(layer["numel"] for layer in layers)
    return sum(layer["numel"] * layer["drop_fraction"] for layer in layers) / max(total, 1)


class MetricWindow:
    """Accumulates per-sample losses by timestep bucket and throughput between two log steps."""

    def __init__(self, buckets: int, num_train_timesteps: int):
        self.buckets, self.num_train_timesteps = buckets, num_train_timesteps
        self.names = bucket_names(buckets, num_train_timesteps)
        self.reset()

    def reset(self) -> None:
        # [loss_sum, count, per-bucket loss sums..., per-bucket counts...]
        self.sums = torch.zeros(2 + 2 * self.buckets, dtype=torch.float64)
        self.optimizer_steps = 0
        self.started = time.perf_counter()

    def add_step(self) -> None:
        self.optimizer_steps += 1

    def add(self, per_sample_loss: torch.Tensor, timesteps: torch.Tensor) -> None:
        losses = per_sample_loss.detach().double().cpu()
        index = bucket_of(timesteps, self.buckets, self.num_train_timesteps)
        self.sums[0] += losses.sum()
        self.sums[1] += losses.numel()
        self.sums[2:2 + self.buckets].index_add_(0, index, losses)
        self.sums[2 + self.buckets:].index_add_(0, index, torch.ones_like(losses))

    def reduce(self) -> dict[str, float]:
        """Window metrics over all ranks (collective when a process group exists)."""
        sums = self.sums.clone()
        if dist.is_available() and dist.is_initialized():
            # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
            on_gpu = dist.get_backend() == "nccl"
            sums = sums.to(torch.device("cuda", torch.cuda.current_device())) if on_gpu else sums
            dist.all_reduce(sums)
            sums = sums.cpu()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        count = sums[1].item()
        metrics = {"train/loss": sums[0].item() / max(count, 1), "train/images_per_s": count / elapsed,
                   "train/step_time_s": elapsed / max(self.optimizer_steps, 1)}
        for i, name in enumerate(self.names):
            n = sums[2 + self.buckets + i].item()
            if n:
                metrics[f"train/loss_{name}"] = sums[2 + i].item() / n
        return metrics
