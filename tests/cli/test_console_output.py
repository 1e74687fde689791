"""`maskunet generate`, `data inspect`, `init-base` and invalid input, run as real processes with
stdout piped: plain periodic progress lines, the closing summary, --json, exit codes 0 / 1 / 2."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from maskunet_platform.cli import main

from tests.fixtures.cli import assert_plain_console, maskunet_env, run_maskunet, summary_value


def test_generate_plain_progress_summary_and_json(tiny_base, tmp_path):
    env = maskunet_env()
    out = tmp_path / "circle.png"
    result = run_maskunet(["generate", "a red circle in the center", "--base", tiny_base, "--steps", "6",
                           "--out", str(out)], env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_plain_console(result)
    steps = [line for line in result.stdout.splitlines() if "denoise: step" in line]
    assert [line.split("step ")[1].split()[0] for line in steps] == [f"{i}/6" for i in range(1, 7)]
    assert f"maskunet generate: wrote {out} (64x64, masks off)" in result.stdout
    log = Path(summary_value(result.stdout, "log"))
    assert log.is_file() and log.parent == Path(env["MASKUNET_LOG_DIR"])
    assert Image.open(out).size == (64, 64)

    # --json, in-process this time (click's runner: Python-level routing, no second interpreter)
    result = CliRunner().invoke(main, ["generate", "a red circle", "--base", tiny_base, "--steps", "2", "--out",
                                       str(tmp_path / "b.png"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds exactly one JSON object
    assert report["out"] == str(tmp_path / "b.png") and report["steps"] == 2 and report["masks"] == "off"
    assert "denoise: step 1/2" in result.stderr  # progress still shows, on stderr


def test_data_inspect_plain_progress_summary_and_json(ray_local, sample_data, tiny_base, tmp_path):
    source = sample_data(rows=320, shards=4, seed=0)
    address = ray_local.get_runtime_context().gcs_address  # join the session's Ray: no second start
    env = maskunet_env()
    args = ["data", "inspect", source, "--base", tiny_base, "--address", address]
    result = run_maskunet(args, env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_plain_console(result)
    progress = [line for line in result.stdout.splitlines() if "read + preprocess: rows" in line]
    assert len(progress) >= 2, result.stdout  # a line per batch here (interval 0), never a redrawn bar
    assert f"maskunet data inspect: {source}" in result.stdout
    assert "rows in:  320" in result.stdout and "dropped:  none" in result.stdout
    assert Path(summary_value(result.stdout, "log")).is_file()

    result = run_maskunet([*args, "--json", "--quiet"], env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"rows_in": 320, "rows_out": 320, "dropped": {}}
    assert result.stderr == ""  # quiet: nothing but the summary (here the JSON object)


@pytest.mark.parametrize("args, names", [
    (["train", "--set", "train.lr=-1"], "train.lr"),
    (["train", "--set", "train.lerning_rate=0.1"], "train.lerning_rate"),
    (["train", "-c", "no/such/job.yaml"], "no/such/job.yaml"),
    (["train", "--frobnicate"], "--frobnicate"),
    (["data", "inspect", "/no/such/dataset"], "/no/such/dataset"),
])
def test_invalid_input_exits_2_with_one_line(args, names, tmp_path):
    result = run_maskunet(args, maskunet_env(), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_run_time_failure_exits_1_with_the_traceback_in_the_log(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_maskunet(["init-base", "--out", str(blocker / "base")], maskunet_env(), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    log = Path(lines[0].rsplit("details: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()
    verbose = CliRunner().invoke(main, ["init-base", "--out", str(blocker / "base"), "-v"])
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr  # --verbose shows it
