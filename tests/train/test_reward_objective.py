"""train.objective reward | both, in-process with the real DeepSpeed engine (ZeRO-2, a gloo
group of one) on the tiny base: the worker's own `train_step`, sampling with the masked
U-Net, the shapes reward, truncated back-propagation. End to end through Ray Train:
test_cli_train.py (objective both)."""
import pytest
import torch

from maskunet_platform.config import ConfigError, load_job
from tests.fixtures.cli import maskunet_env, run_maskunet
from tests.train.conftest import LOCAL_JOB

REWARD = ["train.reward.steps=3", "train.reward.batch_size=2", "train.lr=5e-2", "data.batch_size=2",
          "data.resolution=32"]


def _worker(tiny_base, objective: str, *overrides: str):
    from maskunet_platform.train.base import load_frozen_base
    from maskunet_platform.train.engine import build_engine
    from maskunet_platform.train.loop import Worker
    from maskunet_platform.train.methods import build_trainee
    from maskunet_platform.train.reward import RewardObjective

    job = load_job(LOCAL_JOB, [f"model.base={tiny_base}", f"train.objective={objective}", *REWARD, *overrides])
    device = torch.device("cpu")
    base = load_frozen_base(job.model, device)
    trainee = build_trainee(job, base.unet, device)
    engine = build_engine(trainee.model, job.train, job.data.batch_size, 1, device)
    rng = torch.Generator().manual_seed(0)
    return Worker(job, base, trainee, engine, 0, 1, rng, tracker=None, board=None,
                  reward=RewardObjective(job, base, device, torch.float32))


def _raw_batch(w) -> dict[str, torch.Tensor]:
    from maskunet_platform.data.preprocess import tokenize

    g = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    captions = ["a small red circle at the top left on a white background"] * 2
    return {"pixel_values": pixels, "input_ids": torch.from_numpy(tokenize(captions, w.base.tokenizer))}


def test_every_generator_parameter_gets_a_reward_gradient_at_step_0(tiny_base, gloo_group):
    w = _worker(tiny_base, "reward")
    loss, rewards = w.reward.loss(w.trainee.model, w.base, w.rng)
    loss.backward()
    assert rewards.shape == (2,) and torch.isfinite(loss)
    trained = w.trainee.trained_parameters()
    assert trained and [n for n, p in trained if p.grad is None or not p.grad.abs().gt(0).any()] == []


def test_three_reward_steps_change_the_generator(tiny_base, gloo_group):
    from maskunet_platform.train.loop import train_step

    w = _worker(tiny_base, "reward")
    before = {n: p.detach().clone() for n, p in w.trainee.trained_parameters()}
    results = [train_step(w, _raw_batch(w)) for _ in range(3)]
    assert all(r.stepped and r.per_sample is None and r.rewards.shape == (2,) for r in results)
    changed = [n for n, p in w.trainee.trained_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before)


def test_objective_both_reports_the_denoising_loss_and_the_reward(tiny_base, gloo_group):
    from maskunet_platform.train.loop import train_step
    from maskunet_platform.train.metrics import MetricWindow

    w = _worker(tiny_base, "both", "train.reward.weight=0.5")
    window = MetricWindow(4, 1000)
    result = train_step(w, _raw_batch(w))
    window.add(result.per_sample, result.timesteps)
    window.add_rewards(result.rewards)
    metrics = window.reduce()
    assert metrics["train/loss"] > 0 and metrics["train/reward"] == pytest.approx(result.rewards.mean().item())


def test_only_the_truncation_window_keeps_a_graph(tiny_base, gloo_group):
    """K steps are differentiated (memory ~ K, not steps): the schedule's last K, or K from a
    random step, after which sampling stops (x0 predicted there is scored)."""
    from maskunet.reward_training import RewardSampling, sample_x0_with_grad, window_start

    w = _worker(tiny_base, "reward")
    calls = []
    model = w.trainee.model

    def counting(sample, t, states):
        calls.append(torch.is_grad_enabled())
        return model(sample, t, states)

    states = torch.randn(2, 77, w.base.text_encoder.config.hidden_size)
    rng = torch.Generator().manual_seed(0)
    starts = set()
    for k, truncation in ((1, "last"), (2, "last"), (1, "random"), (2, "random"), (2, "random"), (2, "random")):
        sampling = RewardSampling(steps=4, backprop_steps=k, guidance=2.0, truncation=truncation)
        start = window_start(sampling, rng)
        calls.clear()
        x0 = sample_x0_with_grad(counting, w.reward.scheduler, states, states, torch.randn(2, 4, 4, 4), sampling, start)
        assert calls == [False] * start + [True] * k and x0.requires_grad
        if truncation == "last":
            assert start == 4 - k
        starts.add(start)
    assert len(starts) > 2  # random windows start at several steps


@pytest.mark.parametrize("override, named", [("train.objective=rewards", "train.objective"),
                                             ("train.reward.rewards=[shapes, aesthetic]", "aesthetic"),
                                             ("train.reward.backprop_steps=11", "backprop_steps")])
def test_bad_objective_settings_are_refused(override, named):
    with pytest.raises(ConfigError, match=named):
        load_job(LOCAL_JOB, [override])


def test_an_unknown_reward_exits_2_naming_it():
    result = run_maskunet(["train", "--set", "train.objective=reward", "--set", "train.reward.rewards=[aesthetic]"],
                          maskunet_env(), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "train.reward.rewards" in result.stderr and "'aesthetic'" in result.stderr
