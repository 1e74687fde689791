"""Per-rank random streams and their checkpointed state; what a resuming rank and the final
export download from a checkpoint on S3 (moto)."""
import pyarrow.fs as pafs
import pytest
import torch

from maskunet_platform.train.rng import (fingerprint, restore_rng_state, resume_streams, rng_file,
                                         save_rng_state, seed_streams)


def _draws(worker_rng: torch.Generator) -> torch.Tensor:
    """What a step draws: noise/timesteps from the worker's generator, Gumbel noise from torch's."""
    return torch.cat([torch.randn(8, generator=worker_rng), torch.rand(8)])


def test_streams_are_distinct_per_rank_and_step_and_reproducible():
    rng = torch.Generator()
    draws = {}
    for rank, step in [(0, 0), (1, 0), (0, 20), (1, 20)]:
        seed_streams(rng, seed=0, rank=rank, step=step)
        draws[rank, step] = _draws(rng)
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])
    seed_streams(rng, seed=0, rank=1, step=20)
    assert torch.equal(_draws(rng), draws[1, 20])


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    from safetensors import safe_open

    rng = torch.Generator()
    seed_streams(rng, seed=3, rank=1, step=0)
    _draws(rng)  # some steps happen
    save_rng_state(rng, rank=1, ckpt_dir=tmp_path)
    mark = fingerprint(rng)
    expected = _draws(rng)  # what the uninterrupted run draws next
    seed_streams(rng, seed=99, rank=0, step=0)  # a fresh process after a restart
    assert fingerprint(rng) != mark
    assert restore_rng_state(rng, rank=1, ckpt_dir=tmp_path)
    assert fingerprint(rng) == mark and torch.equal(_draws(rng), expected)
    with safe_open(str(rng_file(tmp_path, 1)), "pt") as f:  # plain uint8 tensors, nothing to unpickle
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.uint8}
    # No state for this rank (another world size): reseeded for the resume step, not step 0's stream.
    assert resume_streams(rng, seed=3, rank=5, step=20, ckpt_dir=tmp_path) == "seeded"
    resumed = _draws(rng)
    seed_streams(rng, seed=3, rank=5, step=0)
    assert not torch.equal(resumed, _draws(rng))


# The layout of a 2-rank ZeRO-2 checkpoint as DeepSpeed 0.19 and save_training_checkpoint write it.
TAG = "deepspeed/step00000010"
CHECKPOINT_FILES = [
    "train_state.json", "generator/config.json", "generator/diffusion_pytorch_model.safetensors",
    f"{TAG}/mp_rank_00_model_states.pt", f"{TAG}/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    f"{TAG}/zero_pp_rank_1_mp_rank_00_optim_states.pt", "deepspeed/latest",
    "rng/rank00000.safetensors", "rng/rank00001.safetensors",
]


@pytest.fixture
def s3_checkpoint(s3):
    from maskunet_platform.data.uri import s3_filesystem

    bucket = s3.create_bucket("maskunet-download")
    fs, path = s3_filesystem(s3.endpoint_url), f"{bucket}/runs/r/checkpoint_step00000010"
    for name in CHECKPOINT_FILES:
        body = b'{"step": 10, "world_size": 2, "engine": "deepspeed"}' if name == "train_state.json" else name.encode()
        with fs.open_output_stream(f"{path}/{name}") as out:
            out.write(body)
    return fs, path


def _local_files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_resuming_rank_downloads_only_what_it_reads(s3_checkpoint, tmp_path):
    from maskunet_platform.train.checkpoint import download_for_rank

    fs, path = s3_checkpoint
    download_for_rank(fs, path, tmp_path / "r1", rank=1, world_size=2, engine_kind="deepspeed")
    assert _local_files(tmp_path / "r1") == {
        "train_state.json", f"{TAG}/mp_rank_00_model_states.pt", f"{TAG}/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "deepspeed/latest", "rng/rank00001.safetensors"}
    assert (tmp_path / "r1" / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").read_bytes() == \
        f"{TAG}/zero_pp_rank_1_mp_rank_00_optim_states.pt".encode()
    # Another world size: the shards do not fit; only the generator weights (and state) come down.
    download_for_rank(fs, path, tmp_path / "w4", rank=3, world_size=4, engine_kind="deepspeed")
    assert _local_files(tmp_path / "w4") == {"train_state.json", "generator/config.json",
                                            "generator/diffusion_pytorch_model.safetensors"}


def test_export_downloads_only_the_generator_folder(s3_checkpoint, tmp_path):
    from maskunet_platform.train.checkpoint import download_generator

    from ray.train import Checkpoint

    fs, path = s3_checkpoint
    out = download_generator(Checkpoint(path=path, filesystem=fs), tmp_path / "export" / "generator")
    assert _local_files(out) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert not (tmp_path / "export" / "deepspeed").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="generator"):
        download_generator(Checkpoint(path=str(tmp_path / "empty"), filesystem=pafs.LocalFileSystem()), tmp_path / "x")
