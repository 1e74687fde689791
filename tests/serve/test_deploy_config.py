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


def test_precision_loads_the_base_in_that_dtype_and_keeps_the_mask_path_fp32(shapes_base, mask_dirs):
    import torch

    from maskunet_platform.serve.engine import LoadOptions, load_pipeline, run_group
    from maskunet_platform.serve.requests import GenerateRequest

    assert LoadOptions().dtype(cuda=True) == torch.float16 and LoadOptions().dtype(cuda=False) == torch.float32
    model = load_pipeline(shapes_base, mask_dirs["a"], options=LoadOptions(batch_invariant=False, precision="bf16"))
    assert model.pipe.unet.dtype == torch.bfloat16 and model.pipe.vae.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.pipe.mask_generator.parameters())
    request = GenerateRequest(prompt="a red circle in the center", negative_prompt="", num_inference_steps=3,
                              guidance_scale=7.5, seed=0, width=64, height=64, num_images=1, masks=True)
    (pngs,) = run_group(model, [request])
    assert pngs[0].startswith(b"\x89PNG") and model.pipe.masked_unet.mask_stats()["layers"]
    with pytest.raises(Exception, match="precision"):
        load_job(None, ["serve.precision=fp8"])


def test_model_compile_decides_whether_a_replica_compiles_its_unet(shapes_base, mask_dirs, caplog):
    """off (and auto on a CPU) never compiles; on compiles the U-Net in place, except while
    batch invariance is promised (compiled kernels are picked per batch shape)."""
    import logging

    from maskunet.compile import is_compiled
    from maskunet_platform.serve.engine import LoadOptions, load_pipeline

    def compiled(**options) -> bool:
        return is_compiled(load_pipeline(shapes_base, mask_dirs["a"], options=LoadOptions(**options)).pipe.unet)

    assert not compiled(compile="off", batch_invariant=False)
    assert not compiled(compile="auto", batch_invariant=False)  # auto: CUDA only
    with caplog.at_level(logging.WARNING, logger="maskunet_platform.serve.engine"):
        assert not compiled(compile="on", batch_invariant=True)
    assert any("batch_invariant is on" in r.getMessage() for r in caplog.records)
    assert compiled(compile="on", batch_invariant=False)  # compiles lazily, at its first call
