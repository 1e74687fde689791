import re

import pytest

from maskunet_platform.config import ConfigError, load_job


def test_defaults_yaml_and_overrides(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: demo\nmask:\n  tau: 0.5\n")
    cfg = load_job(job, ["mask.threshold=0.7", "mask.layers=attn+conv"])
    assert (cfg.name, cfg.mask.tau, cfg.mask.threshold, cfg.mask.layers) == ("demo", 0.5, 0.7, "attn+conv")
    assert load_job().mask.reduction == 4


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("mask:\n  tua: 0.5\n", [], "mask.tua: Extra inputs are not permitted"),
        ("mask:\n  tau: fast\n", [], "mask.tau: Input should be a valid number"),
        ("mask:\n  threshold: 1.5\n", [], "mask.threshold"),
        ("modle: {}\n", [], "modle: Extra inputs"),
        ("", ["mask.reduction"], "not of the form section.key=value"),
        ("name: demo\n", ["name.x=1"], "'name' is not a section"),
        ("- a\n- b\n", [], "must be a mapping"),
        ("model:\n  compile: fast\n", [], "model.compile: Input should be 'auto', 'on' or 'off'"),
        ("", ["model.compile=sometimes"], "model.compile: Input should be 'auto', 'on' or 'off'"),
        ("train:\n  compile: true\n", [], "train.compile moved to model.compile"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, text, overrides, message):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_job(job, overrides)


def test_model_compile_reads_yaml_on_off(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model:\n  compile: off\n")  # YAML 1.1: a bare off is False
    assert load_job(job).model.compile == "off"
    assert load_job(job, ["model.compile=on"]).model.compile == "on"
    assert load_job().model.compile == "auto"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "missing.yaml")
