"""Training metrics over a logging window, reduced across ranks."""
import time

import torch
import torch.distributed as dist


def bucket_of(timesteps: torch.Tensor, buckets: int, num_train_timesteps: int) -> torch.Tensor:
    """Timestep bucket index 0..buckets-1 (bucket 0 = least noise), on the timesteps' device."""
    return (timesteps.long() * buckets // num_train_timesteps).clamp(0, buckets - 1)


def bucket_names(buckets: int, num_train_timesteps: int) -> list[str]:
    edges = [round(i * num_train_timesteps / buckets) for i in range(buckets + 1)]
    return [f"t{edges[i]:04d}_{edges[i + 1] - 1:04d}" for i in range(buckets)]


def realised_sparsity(stats: dict) -> float:
    """Fraction of masked weight entries actually dropped in the last call (size-weighted)."""
    layers = stats["layers"].values()
    total = sum(layer["numel"] for layer in layers)
    return sum(layer["numel"] * layer["drop_fraction"] for layer in layers) / max(total, 1)


class MetricWindow:
    """Accumulates per-sample losses by timestep bucket and throughput between two log steps.

    Sums stay on the device the losses are on; the host waits for the device only in
    `reduce()`, at log steps, not at every micro-step.
    """

    def __init__(self, buckets: int, num_train_timesteps: int):
        self.buckets, self.num_train_timesteps = buckets, num_train_timesteps
        self.names = bucket_names(buckets, num_train_timesteps)
        self.sums: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        # [loss_sum, count, per-bucket loss sums..., per-bucket counts..., reward_sum, reward_count],
        # allocated on first add
        if self.sums is not None:
            self.sums.zero_()
        self.optimizer_steps = 0
        self.started = time.perf_counter()

    def add_step(self) -> None:
        self.optimizer_steps += 1

    def _sums_on(self, device) -> torch.Tensor:
        if self.sums is None or self.sums.device != device:
            self.sums = torch.zeros(4 + 2 * self.buckets, dtype=torch.float64, device=device)
        return self.sums

    def add_rewards(self, rewards: torch.Tensor) -> None:
        """Per-image rewards of the reward objective's sampled images."""
        values = rewards.detach().double()
        sums = self._sums_on(values.device)
        sums[-2] += values.sum()
        sums[-1] += values.numel()

    def add(self, per_sample_loss: torch.Tensor, timesteps: torch.Tensor) -> None:
        losses = per_sample_loss.detach().double()
        self._sums_on(losses.device)
        index = bucket_of(timesteps.to(losses.device), self.buckets, self.num_train_timesteps)
        self.sums[0] += losses.sum()
        self.sums[1] += losses.numel()
        self.sums[2:2 + self.buckets].index_add_(0, index, losses)
        self.sums[2 + self.buckets:2 + 2 * self.buckets].index_add_(0, index, torch.ones_like(losses))

    def reduce(self, per_rank: dict[str, float] | None = None, rank: int = 0,
               world_size: int = 1) -> dict[str, float]:
        """Window metrics over all ranks (collective when a process group exists).

        `per_rank` values (one number per name from every rank) come back as
        `<name>_rank<r>` for every rank r, gathered in the same all-reduce.
        """
        per_rank = per_rank or {}
        sums = self.sums if self.sums is not None else torch.zeros(4 + 2 * self.buckets, dtype=torch.float64)
        packed = _all_reduce(torch.cat([sums, _rank_slots(per_rank, rank, world_size).to(sums.device)]))
        sums, gathered = packed[:len(sums)], packed[len(sums):]  # .cpu() above: the window's one host sync
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        count, rewarded = sums[1].item(), sums[-1].item()
        # Images denoised (data rows) plus images sampled for the reward objective.
        metrics = {"train/images_per_s": (count + rewarded) / elapsed,
                   "train/step_time_s": elapsed / max(self.optimizer_steps, 1)}
        if count or not rewarded:
            metrics["train/loss"] = sums[0].item() / max(count, 1)
        if rewarded:
            metrics["train/reward"] = sums[-2].item() / rewarded
        for i, name in enumerate(self.names):
            n = sums[2 + self.buckets + i].item()
            if n:
                metrics[f"train/loss_{name}"] = sums[2 + i].item() / n
        return metrics | _unpack_ranks(per_rank, gathered, world_size)


def gather_per_rank(values: dict[str, float], rank: int, world_size: int) -> dict[str, float]:
    """`{name}_rank{r}` for every rank r (collective when a process group exists)."""
    return _unpack_ranks(values, _all_reduce(_rank_slots(values, rank, world_size)), world_size)


def _rank_slots(values: dict[str, float], rank: int, world_size: int) -> torch.Tensor:
    """Zeros except this rank's slots: a sum-all-reduce then gathers every rank's values."""
    slots = torch.zeros(len(values) * world_size, dtype=torch.float64)
    for i, value in enumerate(values.values()):
        slots[i * world_size + rank] = value
    return slots


def _unpack_ranks(values: dict[str, float], gathered: torch.Tensor, world_size: int) -> dict[str, float]:
    return {f"{name}_rank{r}": gathered[i * world_size + r].item()
            for i, name in enumerate(values) for r in range(world_size)}


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks when a process group exists; returned on the CPU."""
    if dist.is_available() and dist.is_initialized():
        # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
        on_gpu = dist.get_backend() == "nccl"
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu")
        dist.all_reduce(tensor)
    return tensor.cpu()


def peak_memory_mb(device) -> float:
    """Peak memory of this training worker: CUDA allocations on a GPU, else the process's max RSS."""
    import resource

    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
