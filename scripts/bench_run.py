"""A run's fixed cost: one 4-step `maskunet train` on the tiny base, stage by stage.

Runs the real command (jobs/local.yaml: 2 workers, DeepSpeed ZeRO-2, tracking on in a local
MLflow store, held-out eval, shapes benchmark, samples, export, registration) in a fresh temp
folder, with a tiny random-weight base (`maskunet init-base`), and prints the wall time from
the command's start to each stage's end as the command's own progress lines report it, the
first optimizer step included, then the total. Run it on an otherwise idle machine: the
DeepSpeed/Ray/torch start-up it measures is CPU-bound.

    .venv/bin/python scripts/bench_run.py [--steps 4] [--repeats 1] [--set KEY=VALUE ...]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# "[01:03] start workers done in 43.5s" / "[00:41] training: step 1/4 ..."
LINE = re.compile(r"^\[(\d+):(\d\d)\] (.+?)(?: done in .*|: step (\d+)/\d+.*)$")


def command(tmp: Path, steps: int, extra: list[str]) -> list[str]:
    sets = [f"model.base={tmp / 'base'}", f"data.source={tmp / 'data'}", f"train.storage_path={tmp / 'runs'}",
            f"train.export_dir={tmp / 'exports'}", f"tracking.local_store={tmp / 'mlflow'}", f"train.steps={steps}",
            "train.log_every=1", f"train.checkpoint_every={steps}", "train.eval.rows=8",
            "train.eval.shapes.prompts=4", "train.eval.shapes.steps=2", *extra]
    return [sys.executable, "-m", "maskunet_platform.cli", "train", *(a for s in sets for a in ("--set", s))]


def run_once(steps: int, extra: list[str], keep_log: str | None) -> tuple[float, list[tuple[str, int]], str]:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, MASKUNET_PROGRESS_INTERVAL_S="0", RAY_TMPDIR=str(tmp / "r"))
        subprocess.run([sys.executable, "-m", "maskunet_platform.cli", "init-base", "--out", str(tmp / "base"), "-q"],
                       check=True, capture_output=True, env=env)
        subprocess.run([sys.executable, "-m", "maskunet_platform.cli", "data", "sample", "--out", str(tmp / "data"),
                        "--rows", "320", "-q"], check=True, capture_output=True, env=env)
        started = time.perf_counter()
        done = subprocess.run(command(tmp, steps, extra), capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        logs = sorted((tmp / "exports").glob("*/logs/*.log"))
        if keep_log and logs:
            shutil.copyfile(logs[-1], keep_log)
    if done.returncode != 0:
        raise SystemExit(f"maskunet train failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    marks, summary = [], ""
    for line in done.stdout.splitlines():
        match = LINE.match(line)
        if match:
            minutes, seconds, what, step = match.groups()
            if step is None or step == "1":
                marks.append((what if step is None else "first optimizer step", 60 * int(minutes) + int(seconds)))
        elif line.startswith("time:"):
            summary = line
    return wall, marks, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep-log", default=None, metavar="FILE", help="copy the last run's log file here")
    args = parser.parse_args()
    walls = []
    for i in range(args.repeats):
        wall, marks, summary = run_once(args.steps, args.extra, args.keep_log)
        walls.append(wall)
        print(f"run {i + 1}: {args.steps}-step maskunet train on the tiny base, {wall:.1f} s wall")
        for what, at in marks:
            print(f"  {at:4d} s  {what}")
        print(f"  {summary}")
    walls.sort()
    print(f"median wall over {len(walls)} run(s): {walls[len(walls) // 2]:.1f} s (target <= 45 s on 2 idle cores)")


if __name__ == "__main__":
    main()
