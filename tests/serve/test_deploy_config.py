"""The serve section and the Serve config file `serve deploy` takes (checked against Ray
Serve's own schema), without starting anything."""
from pathlib import Path

import pytest
import yaml

from maskunet_platform.config import ConfigError, load_job

REPO = Path(__file__).resolve().parents[2]


def test_serve_job_and_deploy_file_validate():
    from ray.serve.schema import ServeDeploySchema

    job = load_job(REPO / "jobs" / "serve.yaml")
    assert job.serve.host == "127.0.0.1" and job.serve.auth.token_env is None
    assert job.serve.max_ongoing_requests >= job.serve.batching.max_batch_size
    deploy = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "jobs" / "serve-deploy.yaml").read_text()))
    assert deploy.http_options.host == "127.0.0.1"
    (app,) = deploy.applications
    assert app.import_path == "maskunet_platform.serve.app:app_builder" and app.route_prefix == "/"
    for item in app.args["set"]:  # the overrides it carries are valid fields
        load_job(None, [item])


def test_app_builder_builds_the_configured_deployment(shapes_base):
    from ray.serve import Application

    from maskunet_platform.serve.app import app_builder, deployment_options

    app = app_builder({"base": shapes_base, "set": ["serve.batching.max_batch_size=4", "serve.max_queued_requests=7",
                                                     "serve.autoscaling={max_replicas: 3}"]})
    assert isinstance(app, Application)
    job = load_job(None, ["serve.batching.max_batch_size=4", "serve.max_queued_requests=7"])
    options = deployment_options(job.serve)
    assert options["max_ongoing_requests"] == 10 and options["max_queued_requests"] == 7
    assert options["backpressure_config"].status_code == 503 and options["backpressure_config"].retry_after_s == 2
    with pytest.raises(ValueError, match="base"):
        app_builder({"set": []})


@pytest.mark.parametrize("override, field", [
    ("serve.batching.max_batch_size=0", "serve.batching.max_batch_size"),
    ("serve.limits.min_size=1024", "min_size must not exceed max_size"),
    ("serve.bogus=1", "serve.bogus"),
    ("serve.port=70000", "serve.port"),
    ("serve.route_prefix=api", "serve.route_prefix"),
])
def test_bad_serve_fields_are_named(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_job(None, [override])
