"""Reward specs (NAME[=PATH][:WEIGHT]) without torch: job configs validate them in the driver."""
from __future__ import annotations

from dataclasses import dataclass

REWARD_NAMES = ("shapes", "clip", "hps", "imagereward")


@dataclass(frozen=True)
class RewardSpec:
    name: str
    path: str | None = None
    weight: float = 1.0


def parse_reward_spec(text: str) -> RewardSpec:
    head, weight = text, 1.0
    if ":" in text:
        maybe_head, _, tail = text.rpartition(":")
        try:
            weight, head = float(tail), maybe_head
        except ValueError:
            pass  # a colon inside the path, no weight
    name, _, path = head.partition("=")
    name = name.strip().lower()
    if name not in REWARD_NAMES:
        raise ValueError(f"unknown reward {name!r} in {text!r}; choose from {', '.join(REWARD_NAMES)}")
    if not weight == weight or weight in (float("inf"), float("-inf")):
        raise ValueError(f"reward weight must be finite in {text!r}")
    return RewardSpec(name, path or None, weight)
