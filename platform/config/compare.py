"""`compare` section: `maskunet compare` trains each method on the same data and budget."""
from typing import Optional, get_args

from pydantic import Field, field_validator

from maskunet_platform.config.base import Section
from maskunet_platform.config.train import Method, Objective

METHODS, OBJECTIVES = get_args(Method), get_args(Objective)
# What must stay the same across the compared methods: data, base, budget (steps x batch), eval.
SHARED_PREFIXES = ("name", "model.", "data.", "train.method", "train.objective", "train.steps", "train.seed",
                   "train.num_workers", "train.eval.", "train.deepspeed.gradient_accumulation_steps", "compare.",
                   "tune.")


def parse_entry(entry: str) -> tuple[str, Optional[str]]:
    """`METHOD[:OBJECTIVE]` -> (train.method, train.objective or None: the job's own)."""
    method, _, objective = entry.partition(":")
    if method not in METHODS:
        raise ValueError(f"{entry!r}: the method must be one of {', '.join(METHODS)} (METHOD[:OBJECTIVE])")
    if objective and objective not in OBJECTIVES:
        raise ValueError(f"{entry!r}: the objective must be one of {', '.join(OBJECTIVES)}")
    return method, objective or None


class CompareSection(Section):
    # Each entry trains one row: METHOD (masks | lora | full) on the job's train.objective, or
    # METHOD:OBJECTIVE (e.g. masks:reward, lora:reward) on that objective.
    methods: list[str] = Field(default_factory=lambda: ["masks", "lora", "full"])
    # Per-entry `--set`-style overrides of the job (e.g. each method's learning rate or ZeRO
    # stage); never of what the comparison holds fixed (SHARED_PREFIXES).
    overrides: dict[str, list[str]] = Field(default_factory=dict)
    # (a subject job draws its report's first new-context prompts instead)
    grid_prompts: list[str] = Field(default_factory=lambda: [
        "a large red circle in the center on a blue background",
        "a small yellow square at the top left on a black background",
        "a green triangle at the bottom right on a white background"])
    grid_seed: int = 0
    grid_steps: int = Field(20, ge=1)
    grid_guidance: float = Field(7.5, ge=0)
    out_dir: str = Field("~/.cache/maskunet/compare", description="table.json, table.txt, grid.png per job")

    @field_validator("methods")
    @classmethod
    def _distinct(cls, methods: list[str]) -> list[str]:
        if not methods or len(set(methods)) != len(methods):
            raise ValueError("list each method once (masks, lora, full, or METHOD:OBJECTIVE)")
        for entry in methods:
            parse_entry(entry)
        return methods

    @field_validator("overrides")
    @classmethod
    def _budget_is_shared(cls, overrides: dict) -> dict:
        for method, items in overrides.items():
            parse_entry(method)
            for item in items:
                key = item.split("=", 1)[0].strip()
                if "=" not in item or key.startswith(SHARED_PREFIXES):
                    raise ValueError(f"{method}: {item!r} must be key=value and not change "
                                     "what every method shares (data, base, steps, batch, eval)")
        return overrides
