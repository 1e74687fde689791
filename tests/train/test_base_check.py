"""A base that cannot be loaded fails before Ray, workers or an MLflow run; the CLI says so in
one line with exit code 2."""
import os
import shutil

import pytest
from click.testing import CliRunner

from maskunet_platform.train.base_check import BaseModelError, check_base


def _runs(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_unreachable_hub_id_fails_before_any_run(make_job, mlflow_server, monkeypatch):
    from mlflow import MlflowClient

    from maskunet_platform.train.launcher import train_job

    import huggingface_hub.constants

    # No network here; offline mode makes the Hub client answer at once instead of retrying.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", os.path.join(os.environ.get("TMPDIR", "/tmp"), "maskunet-empty-hf-home"))
    job = make_job("badbase", "model.base=stable-diffusion-v1-5/stable-diffusion-v1-5",
                   "model.revision=451f4fe16113bff5a5d2269ed5ad43b0592e9a14", "model.create_tiny_if_missing=false",
                   tracking_uri=mlflow_server.tracking_uri)
    with pytest.raises(BaseModelError, match=r"model\.base 'stable-diffusion-v1-5/stable-diffusion-v1-5' at "
                                             r"model\.revision '451f4fe1.*unreachable"):
        train_job(job)
    assert _runs(MlflowClient(mlflow_server.tracking_uri), job.tracking.experiment) == []


def test_incomplete_local_folder_names_the_missing_files(tiny_base, tmp_path, make_job):
    broken = tmp_path / "broken-base"
    shutil.copytree(tiny_base, broken)
    shutil.rmtree(broken / "vae")
    job = make_job("broken", f"model.base={broken}", "model.create_tiny_if_missing=false")
    with pytest.raises(BaseModelError, match=r"missing vae/config\.json"):
        check_base(job.model)
    check_base(make_job("fine").model)  # the intact tiny base passes


def test_cli_exit_code_2_and_one_line(tmp_path, train_data):
    from maskunet_platform.cli import main

    result = CliRunner().invoke(main, ["train", "--set", f"model.base={tmp_path / 'nowhere'}",
                                       "--set", "model.create_tiny_if_missing=false",
                                       "--set", f"data.source={train_data}", "--set", "tracking.enabled=false"])
    assert result.exit_code == 2, result.output
    assert "model.base" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
