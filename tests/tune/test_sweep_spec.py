"""A bad sweep spec fails with exit 2 and a one-line message naming the problem, within
seconds and before Ray starts (all cases in one fresh process that never had Ray)."""
import json
import subprocess
import sys
import time

CASES = [
    ("tune.search_space={mask.nope: {choice: [1]}}", "mask.nope: not a field"),
    ("tune.search_space={tune.metric: {choice: [x]}}", "tune.metric: not a field"),
    ("tune.search_space={mask.tau: {uniform: [-1.0, 2.0]}}", "mask.tau: uniform value -1.0 is invalid"),
    ("tune.search_space={mask.tau: {uniform: [0.0, 2.0]}}", "mask.tau: uniform value 0.0 is invalid"),
    ("tune.search_space={mask.tau: {uniform: [3.0, 1.0]}}", "lower bound 3.0 must be below"),
    ("tune.search_space={mask.tau: {loguniform: [0.0, 1.0]}}", "loguniform: bounds must be > 0"),
    ("tune.search_space={mask.tau: {choice: []}}", "choice: needs at least one value"),
    ("tune.search_space={mask.tau: {normal: [0, 1]}}", "mask.tau.normal"),
    ("tune.search_space={mask.threshold: {grid: [0.5, 1.5]}}", "mask.threshold: grid value 1.5 is invalid"),
    ("tune.search_space={}", "tune.search_space: empty"),
    ("tune.scheduler.type=hyperband", "tune.scheduler.type"),
    ("tune.metric=train/loss", "tune.metric 'train/loss'"),
    # subject/... metrics only exist for a subject job (jobs/sweep-local.yaml is not one)
    ("tune.constraints={subject/masked/background: {min: 0.9}}", "tune.constraints.subject/masked/background"),
    ("tune.constraints={eval/rows: {}}", "give min, max or both"),
    ("tune.constraints={eval/rows: {min: 2, max: 1}}", "min 2.0 is above max 1.0"),
]

PROBE = """
import json, sys, time
from click.testing import CliRunner
from maskunet_platform.cli import main
out = []
for override in json.loads(sys.argv[1]):
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["sweep", "--set", override, "--set", "tune.storage_path=" + sys.argv[2]])
    out.append([result.exit_code, result.output, time.perf_counter() - started])
import ray
print(json.dumps({"results": out, "ray_started": ray.is_initialized()}))
"""


def test_bad_sweep_specs_exit_2_naming_the_problem_before_ray_starts(tmp_path):
    started = time.perf_counter()
    probe = subprocess.run([sys.executable, "-c", PROBE, json.dumps([c for c, _ in CASES]), str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["ray_started"] is False
    for (override, message), (code, output, seconds) in zip(CASES, report["results"]):
        assert code == 2, (override, output)
        assert message in output and "Traceback" not in output, (override, output)
        assert len(output.strip().splitlines()) == 1 and seconds < 5, (override, output, seconds)
    assert time.perf_counter() - started < 120


def test_shipped_sweep_jobs_are_valid():
    from maskunet_platform.config import load_job
    from maskunet_platform.tune.space import check_search_space

    from maskunet_platform.tune.sweep import check_sweep

    local, sd15 = load_job("jobs/sweep-local.yaml"), load_job("jobs/sweep-sd15.yaml")
    subject = load_job("jobs/sweep-subject.yaml")
    check_search_space(sd15)  # its storage is on S3: not reachable here
    for job in (local, subject):
        check_sweep(job, "a-sweep-that-does-not-exist", resume=False)
    assert subject.tune.metric.startswith("subject/") and subject.tune.mode == "max"
    assert subject.tune.constraints["subject/masked/background"].min == 0.9
    assert local.model.base == "~/.cache/maskunet/shapes-base" and not local.train.use_gpu
    assert sd15.train.use_gpu and sd15.tune.max_concurrent_trials * sd15.train.num_workers <= 8
    assert {"mask.tau", "mask.threshold"} <= set(local.tune.search_space)  # tau moves with the threshold
