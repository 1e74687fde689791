"""`maskunet generate`'s sampler options: --scheduler and the training-free mode.

Validates the options up front (one `InvalidInput` naming the option, exit code 2) and runs
one generation, plain or training-free (maskunet.training_free), returning the image and,
for the training-free mode, its per-step report.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import click

from maskunet_platform.console.errors import InvalidInput

SCHEDULER_CHOICES = ("dpm++2m", "ddim", "euler")


def sampler_options(command):
    """The click options this module handles, added to a command."""
    options = [
        click.option("--scheduler", type=click.Choice(SCHEDULER_CHOICES), default=None,
                     help="sampling scheduler (default: the base's own; dpm++2m with --training-free)"),
        click.option("--training-free", is_flag=True, help="optimise per-step mask logits against rewards while sampling"),
        click.option("--reward", "rewards", multiple=True, metavar="NAME[=PATH][:WEIGHT]",
                     help="training-free reward term, repeatable: shapes | clip | hps | imagereward (default: shapes)"),
        click.option("--tf-iters", type=int, default=None, help="optimisation iterations at every step"),
        click.option("--tf-schedule", default=None, metavar="SPEC",
                     help="iterations per step: 'reference' (default: 1 for the first 7/15 of the steps, 10 after), "
                          "or K / KxN items, e.g. 1x7,10x8"),
        click.option("--tf-lr", type=float, default=1e-2, show_default=True, help="AdamW learning rate of the logits"),
        click.option("--tf-keep", type=float, default=0.934, show_default=True,
                     help="initial keep probability of every masked entry"),
        click.option("--report", "report_file", default=None, type=click.Path(dir_okay=False),
                     help="training-free: write per-step rewards and drop fractions to this JSON file"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass
class SamplerChoice:
    scheduler: Optional[str]
    training_free: Optional[object]  # maskunet.training_free.TrainingFreeConfig
    rewards: tuple[str, ...]
    report_file: Optional[str]


def parse_sampler_options(steps: int, scheduler, training_free, rewards, tf_iters, tf_schedule, tf_lr, tf_keep,
                          report_file) -> SamplerChoice:
    """Check the options; raise InvalidInput naming the first bad one."""
    from maskunet.rewards import parse_reward_spec
    from maskunet.schedules import parse_iteration_schedule
    from maskunet.training_free import TrainingFreeConfig

    if not training_free:
        given = [name for name, value in (("--reward", rewards), ("--tf-iters", tf_iters),
                                          ("--tf-schedule", tf_schedule), ("--report", report_file)) if value]
        if given:
            raise InvalidInput(f"{given[0]} needs --training-free")
        return SamplerChoice(scheduler, None, (), None)
    if tf_iters is not None and tf_schedule is not None:
        raise InvalidInput("--tf-iters and --tf-schedule: give one of them")
    if tf_iters is not None and tf_iters < 0:
        raise InvalidInput(f"--tf-iters must be >= 0, got {tf_iters}")
    schedule = tf_iters if tf_iters is not None else (tf_schedule or "reference")
    try:
        parse_iteration_schedule(schedule, steps)
    except ValueError as e:
        raise InvalidInput(f"--tf-schedule {schedule!r}: {e}") from None
    if not (math.isfinite(tf_lr) and tf_lr > 0):
        raise InvalidInput(f"--tf-lr must be a positive number, got {tf_lr}")
    if not 0.0 < tf_keep < 1.0:
        raise InvalidInput(f"--tf-keep must be in (0, 1), got {tf_keep}")
    for spec in rewards:
        try:
            parse_reward_spec(spec)
        except ValueError as e:
            raise InvalidInput(f"--reward {spec!r}: {e}") from None
    config = TrainingFreeConfig(schedule=schedule, lr=tf_lr, keep_probability=tf_keep,
                                track_rewards=report_file is not None)
    return SamplerChoice(scheduler or "dpm++2m", config, tuple(rewards) or ("shapes",), report_file)


def prepare(pipe, choice: SamplerChoice):
    """Install the chosen scheduler; build the training-free sampler (None for plain sampling)."""
    from maskunet.rewards import build_reward
    from maskunet.schedules import make_scheduler
    from maskunet.training_free import TrainingFreeSampler

    if choice.scheduler:
        pipe.scheduler = make_scheduler(choice.scheduler, pipe.scheduler.config)
    if choice.training_free is None:
        return None
    if pipe.tuning is not None:
        raise InvalidInput("--training-free runs on the base U-Net: drop --masks")
    try:
        reward = build_reward(list(choice.rewards), device=pipe.unet.device)
    except ValueError as e:  # RewardUnavailable included: names the package or file
        raise InvalidInput(f"--reward: {e}") from None
    return TrainingFreeSampler(pipe, reward, choice.training_free)


def write_report(path: str, output, choice: SamplerChoice, **run: object) -> None:
    report = {**run, "scheduler": choice.scheduler, "rewards": list(choice.rewards),
              "config": asdict(choice.training_free), **output.report()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
