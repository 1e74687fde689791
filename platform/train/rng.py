"""Per-rank random streams of a training worker, and their state in checkpoints.

A worker draws from three streams: its own CPU `torch.Generator` (diffusion noise and
timesteps), torch's global CPU generator and the CUDA generator of its device (Gumbel noise
in `maskunet.gumbel`, VAE posterior sampling). All three are seeded from
(train.seed, rank, step), so ranks never share noise and a fresh start at step k never
replays step 0's stream. The generator's initial weights are drawn before this seeding,
from `train.seed` alone, and are identical on every rank.

Resume guarantee: with the same world size, every rank restores the exact state its streams
had when the checkpoint was written, so the steps after a resume draw what an uninterrupted
run would have drawn. When a rank's state is missing (another world size, an older
checkpoint) its streams are reseeded from (seed, rank, resume step) instead.

States are stored per rank as uint8 tensors in safetensors (nothing is unpickled).
"""
import hashlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

RNG_DIR = "rng"


def stream_seed(seed: int, rank: int, step: int, stream: str) -> int:
    """A 63-bit seed unique to (seed, rank, step, stream)."""
    digest = hashlib.sha256(f"maskunet/{seed}/{rank}/{step}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_streams(worker_rng: torch.Generator, seed: int, rank: int, step: int) -> None:
    worker_rng.manual_seed(stream_seed(seed, rank, step, "worker"))
    torch.manual_seed(stream_seed(seed, rank, step, "global"))  # CPU and every CUDA device


def stream_states(worker_rng: torch.Generator) -> dict[str, torch.Tensor]:
    states = {"worker": worker_rng.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state()  # the current device's generator
    return states


def rng_file(ckpt_dir: str | Path, rank: int) -> Path:
    return Path(ckpt_dir) / RNG_DIR / f"rank{rank:05d}.safetensors"


def save_rng_state(worker_rng: torch.Generator, rank: int, ckpt_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    path = rng_file(ckpt_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in stream_states(worker_rng).items()}, str(path))
    return path


def restore_rng_state(worker_rng: torch.Generator, rank: int, ckpt_dir: str | Path) -> bool:
    """Restore this rank's streams from `ckpt_dir`; False when the checkpoint has no state for it."""
    from safetensors.torch import load_file

    path = rng_file(ckpt_dir, rank)
    if not path.exists():
        return False
    states = load_file(str(path))
    worker_rng.set_state(states["worker"])
    torch.set_rng_state(states["torch_cpu"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["torch_cuda"])
    return True


def resume_streams(worker_rng: torch.Generator, seed: int, rank: int, step: int,
                   ckpt_dir: str | Path | None) -> str:
    """Exact state from the checkpoint when it has one for this rank, else seeds for `step`.
    Returns how the streams were set ("restored" | "seeded")."""
    if ckpt_dir is not None and restore_rng_state(worker_rng, rank, ckpt_dir):
        return "restored"
    if ckpt_dir is not None:
        log.warning("rank %d: checkpoint has no random state for this rank; reseeding for step %d", rank, step)
    seed_streams(worker_rng, seed, rank, step)
    return "seeded"


def fingerprint(worker_rng: torch.Generator) -> float:
    """A number in [0, 1) identifying the current state of all streams (exact in float64).

    Logged per rank at log steps: different ranks must differ, and the same step of a
    resumed run must repeat the uninterrupted run's value.
    """
    digest = hashlib.sha256()
    for name, state in sorted(stream_states(worker_rng).items()):
        digest.update(name.encode())
        digest.update(state.numpy().tobytes())
    return int.from_bytes(digest.digest()[:5], "little") / 2**40
