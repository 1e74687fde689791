"""Fast checks of the training config, DeepSpeed config, schedules, params and checkpoints (no Ray)."""
import json

import pytest
import torch

from maskunet_platform.config import ConfigError, load_job
from maskunet_platform.config.train import TrainSection
from maskunet_platform.train.engine import deepspeed_config, lr_lambda
from tests.train.conftest import LOCAL_JOB


def test_local_job_is_zero2_over_gloo_on_two_cpu_workers():
    job = load_job(LOCAL_JOB)
    assert (job.train.num_workers, job.train.use_gpu, job.train.backend) == (2, False, "gloo")
    assert job.train.deepspeed.enabled and job.train.deepspeed.zero_stage == 2
    sd15 = load_job(LOCAL_JOB.parent / "sd15-laion-art.yaml")
    assert sd15.model.base == "stable-diffusion-v1-5/stable-diffusion-v1-5" and sd15.model.revision and sd15.train.lr == 1e-5
    assert (sd15.train.num_workers, sd15.data.batch_size, sd15.train.steps) == (8, 4, 7000)


@pytest.mark.parametrize("override, field", [
    ("train.deepspeed.zero_stage=4", "train.deepspeed.zero_stage"),
    ("train.deepspeed.offload_param=cpu", "train.deepspeed"),
    ("train.precision=fp16", "train"),
    ("train.deepspeed.gradient_clipping=-1", "train.deepspeed.gradient_clipping"),
    ("train.stepz=3", "train.stepz"),
])
def test_bad_train_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_job(LOCAL_JOB, [override])
    assert field in str(err.value)


def test_deepspeed_config_is_explicit_and_consistent():
    train = TrainSection.model_validate({"deepspeed": {"zero_stage": 3, "offload_param": "cpu",
                                                       "offload_optimizer": "cpu", "gradient_accumulation_steps": 2,
                                                       "gradient_clipping": 0.0, "extra": {"zero_optimization": {"reduce_bucket_size": 5}}}})
    cfg = deepspeed_config(train, micro_batch=4, world_size=8)
    assert cfg["gradient_clipping"] == 0.0  # explicit even when off (DeepSpeed would default to 1.0)
    assert cfg["train_batch_size"] == 4 * 2 * 8
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu" and zero["reduce_bucket_size"] == 5


def test_lr_schedule_warmup_then_decay():
    train = TrainSection(steps=10, warmup_steps=2, lr_schedule="linear")
    f = lr_lambda(train)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(10) == 0.0 and 0 < f(6) < 1
    assert lr_lambda(TrainSection(steps=10, lr_schedule="constant"))(9) == 1.0


def test_params_never_carry_secrets():
    from maskunet_platform.train.tracking import flatten_params

    job = load_job(LOCAL_JOB, ["data.s3_endpoint_url=http://AKIA:hunter2@minio:9000",
                               "train.deepspeed.extra={api_token: hunter2}"])
    params = flatten_params(job)
    assert not any("hunter2" in v for v in params.values())
    assert params["data.s3_endpoint_url"] == "http://***@minio:9000"
    assert params["train.deepspeed.zero_stage"] == "2"


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_checkpoint_loader_refuses_arbitrary_pickles(tmp_path):
    from maskunet_platform.train.checkpoint import _torch_load_weights_only

    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with _torch_load_weights_only():
        with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
            torch.load(path, weights_only=False)  # what DeepSpeed asks for; forced to weights_only
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "ok.pt")
    with _torch_load_weights_only():
        assert torch.load(tmp_path / "ok.pt", weights_only=False)["step"] == 3


def test_ddp_checkpoint_round_trip(tmp_path):
    """Single-process DDP-engine save/restore: generator weights, optimizer and step come back."""
    from diffusers import UNet2DConditionModel

    from maskunet import MaskedUNet, MaskGenerator
    from maskunet.tiny import TINY_UNET
    from maskunet_platform.train.checkpoint import read_train_state, restore_training_checkpoint, save_training_checkpoint
    from maskunet_platform.train.engine import build_engine

    def fresh(seed):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        masked = MaskedUNet(unet, MaskGenerator.from_unet(unet))
        train = TrainSection(deepspeed={"enabled": False}, lr=1e-2)
        return masked, build_engine(masked, train, 2, 1, torch.device("cpu"))

    masked, engine = fresh(0)
    x = (torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 77, 32))
    engine.forward_module(*x).sample.pow(2).mean().backward()
    assert engine.step()
    save_training_checkpoint(engine, masked.generator, 7, 0, 1, tmp_path)
    assert read_train_state(tmp_path).step == 7
    assert json.loads((tmp_path / "generator" / "config.json").read_text())
    other, other_engine = fresh(1)
    assert restore_training_checkpoint(other_engine, other.generator, tmp_path, 1) == 7
    for (name, a), (_, b) in zip(masked.generator.state_dict().items(), other.generator.state_dict().items()):
        assert torch.equal(a, b), name
    state = other_engine.optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 1 for s in state.values())


def test_rows_trained_at_newest_complete_checkpoint(tmp_path, make_job):
    """The data stream of a restart resumes after the rows of the newest *complete* checkpoint."""
    import json

    from maskunet_platform.train.launcher import storage_location
    from maskunet_platform.train.recovery import checkpoint_dir_name, rows_trained_at_newest_checkpoint

    job = make_job("rows", f"train.storage_path={tmp_path}", "data.batch_size=4",
                   "train.deepspeed.gradient_accumulation_steps=2")
    storage = storage_location(job.train.storage_path)
    assert rows_trained_at_newest_checkpoint(job, "rows", storage) == 0
    for step, ranks in [(10, 2), (20, 1)]:  # step 20: only rank 0 finished uploading
        folder = tmp_path / "rows" / checkpoint_dir_name(step)
        folder.mkdir(parents=True)
        (folder / "train_state.json").write_text(json.dumps({"step": step, "world_size": 2}))
        for rank in range(ranks):
            (folder / f".complete_rank{rank:05d}").write_text("ok")
    assert rows_trained_at_newest_checkpoint(job, "rows", storage) == 10 * 4 * 2 * 2


ZERO2_STEPS = """
import os, sys, torch, torch.distributed as dist
os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
dist.init_process_group("gloo")
from maskunet_platform.config import load_job
from maskunet_platform.train.engine import build_engine
job = load_job(sys.argv[2], [])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
before = [p.detach().clone() for p in model.parameters()]
engine = build_engine(model, job.train, 2, 1, torch.device("cpu"))
applied = []
for _ in range(3):
    engine.backward(engine.forward_module(torch.randn(2, 8)).square().mean())
    applied.append(engine.step())
moved = all(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
print(engine.kind, all(applied), moved, "torch._inductor.compile_fx" in sys.modules)
"""


def test_zero2_steps_without_importing_deepspeeds_muon(tmp_path):
    # DeepSpeed's Muon modules torch.compile at import (inductor: seconds per worker); the
    # engine stands in for them, and ZeRO-2 still applies every step to every parameter.
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    done = subprocess.run([sys.executable, "-c", ZERO2_STEPS, port, str(LOCAL_JOB)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-4:] == ["deepspeed", "True", "True", "False"], done.stdout[-2000:]


def test_rank0_post_training_failure_reaches_the_driver_as_one_line(ray_local, make_job, tmp_path):
    # Rank 0 never raises out of its post-training work (that would restart training): the
    # error goes through the progress board, and the driver fails the run with it.
    from maskunet_platform.console.train_progress import ProgressBoard
    from maskunet_platform.train.post_training import PostTrainingRequest, post_train_in_worker, take_post_training

    board = ProgressBoard.remote()
    job = make_job("post-fails")
    post_train_in_worker(job.model_dump(mode="json"), PostTrainingRequest(), board, str(tmp_path / "no-weights"))
    error = take_post_training(board)
    assert isinstance(error, str) and str(tmp_path / "no-weights") in error, error
    assert error.startswith(("ValueError: ", "FileNotFoundError: ")), error
