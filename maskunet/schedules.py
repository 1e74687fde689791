"""Sampling schedulers by name, and the training-free mode's iterations-per-step schedule."""
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

SCHEDULERS = ("dpm++2m", "ddim", "euler")

# The reference schedule: K = 1 for the first 7 of 15 steps, K = 10 after.
REFERENCE_EARLY_FRACTION = 7 / 15
REFERENCE_EARLY_K, REFERENCE_LATE_K = 1, 10


def make_scheduler(name: str, config):
    """A sampling scheduler built from a base's scheduler config (noise schedule, prediction type)."""
    if name == "dpm++2m":
        # Second-order multistep DPM-Solver++ (diffusers' defaults: lower order at the last steps).
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def reference_schedule(steps: int) -> list[int]:
    early = round(steps * REFERENCE_EARLY_FRACTION)
    return [REFERENCE_EARLY_K] * early + [REFERENCE_LATE_K] * (steps - early)


def parse_iteration_schedule(spec: str | int, steps: int) -> list[int]:
    """Optimisation iterations K for each of `steps` steps.

    `spec`: "reference" (K = 1 for the first 7/15 of the steps, 10 after); an integer K for
    every step; or comma-separated `K` / `KxN` (K for N steps) items, e.g. "1x7,10x8". A
    shorter schedule repeats its last K; a longer one is an error.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(spec, int):
        spec = str(spec)
    spec = spec.strip()
    if spec == "reference":
        return reference_schedule(steps)
    schedule: list[int] = []
    for item in spec.split(","):
        k_text, _, n_text = item.strip().partition("x")
        try:
            k, n = int(k_text), int(n_text) if n_text else 1
        except ValueError:
            raise ValueError(f"bad schedule item {item.strip()!r}: expected K or KxN (integers)") from None
        if k < 0 or n < 1:
            raise ValueError(f"bad schedule item {item.strip()!r}: K must be >= 0 and N >= 1")
        schedule += [k] * n
    if len(schedule) > steps:
        raise ValueError(f"the schedule covers {len(schedule)} steps but sampling has {steps}")
    return schedule + [schedule[-1]] * (steps - len(schedule))

