"""ASHA vs a full-budget grid over the same points, and the sweep's overhead.

Runs `maskunet sweep` twice on jobs/sweep-local.yaml (embedded default: pretrained shapes
base, sample data, local CPUs) with the same grid: once with ASHA, once with FIFO (every
trial to the end). Prints the trial-steps each spent, their ratio (target <= 0.4), whether
both found the same best point, and sweep wall time vs the sum of its trials' wall times.

    .venv/bin/python scripts/bench_sweep.py [--steps 20] [--grid 0.3,0.5,0.7,0.9] [--grace 4] [--rf 2] [--quick-rows 8]
"""
import argparse
import json
import subprocess
import sys
import tempfile


def run(scheduler: str, args, tmp: str) -> dict:
    steps, grid = args.steps, args.grid
    sets = [f"tune.scheduler.type={scheduler}", f"train.steps={steps}", f"train.checkpoint_every={steps}",
            f"tune.scheduler.grace_period={args.grace}", f"tune.scheduler.reduction_factor={args.rf}",
            # The same data order in both sweeps: a trial both run to the end scores the same,
            # so "same best point" compares the schedulers, not data-order noise (~3%).
            "data.deterministic=true", f"tune.quick_eval_rows={args.quick_rows}",
            f"tune.search_space={{mask.threshold: {{grid: [{grid}]}}}}", f"tune.storage_path={tmp}/sweeps",
            f"tracking.local_store={tmp}/mlflow", f"train.storage_path={tmp}/runs", f"train.export_dir={tmp}/export"]
    command = [sys.executable, "-m", "maskunet_platform.cli", "sweep", "--name", f"bench-{scheduler}", "--json",
               *(arg for s in sets for arg in ("--set", s))]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grid", default="0.3,0.5,0.7,0.9")
    parser.add_argument("--grace", type=int, default=4, help="ASHA grace period (steps)")
    parser.add_argument("--rf", type=float, default=2, help="ASHA reduction factor")
    parser.add_argument("--quick-rows", type=int, default=8, help="held-out rows ASHA's quick score uses")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        reports = {name: run(name, args, tmp) for name in ("asha", "fifo")}
    spent = {name: sum(t["steps"] for t in r["trials"]) for name, r in reports.items()}
    best = {name: r["best"]["config"] for name, r in reports.items()}
    for name, r in reports.items():
        trials = sum(t["seconds"] for t in r["trials"])
        print(f"{name}: {len(r['trials'])} trials, {spent[name]} trial-steps, best {best[name]} "
              f"({r['best']['metric']:.6f}); sweep wall {r['wall_s']:.0f}s vs trials {trials:.0f}s "
              f"(overhead x{r['wall_s'] / trials:.2f})")
    print(f"ASHA / grid trial-steps: {spent['asha'] / spent['fifo']:.2f} (target <= 0.4); "
          f"same best point: {best['asha'] == best['fifo']}")


if __name__ == "__main__":
    main()
