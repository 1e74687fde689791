"""Serve tests: one Serve instance (real HTTP on 127.0.0.1) over the session's local Ray, one
API app on the pretrained shapes base shared by the API and playground tests, and HTTP helpers.

Replicas ask Ray for 0 CPUs (they run 2 torch threads anyway), so an idle app never holds
CPUs that other tests' Ray jobs need; the apps are deleted when their tests are done."""
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

import pytest

from tests.fixtures.services import free_port

TEST_SETTINGS = {"cpus_per_replica": 0, "torch_threads": 2, "retry_after_s": 1,
                 "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.3},
                 "max_queued_requests": 8, "limits": {"default_steps": 4, "max_steps": 30, "max_size": 128}}


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(url: str, method: str = "GET", body: Optional[bytes] = None, headers: Optional[dict] = None,
         timeout: float = 300) -> Answer:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, dict(e.headers), e.read())


def post_json(url: str, payload, headers: Optional[dict] = None, timeout: float = 300) -> Answer:
    return http(url, "POST", json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})},
                timeout)


@pytest.fixture(scope="session")
def mask_dirs(shapes_base, tmp_path_factory) -> dict:
    """Two mask generators for the shapes base whose masks drop weights (logit bias 0), built
    from different seeds, so they draw different images; saved as safetensors folders."""
    import torch

    from maskunet import MaskConfig, MaskGenerator, MaskUNetPipeline

    unet = MaskUNetPipeline.from_base(shapes_base).unet
    root = tmp_path_factory.mktemp("serve-masks")
    dirs = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        generator = MaskGenerator.from_unet(unet, MaskConfig(logit_bias=0.0, code_init_std=0.5))
        generator.save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


@pytest.fixture(scope="package")
def serve_url(ray_local):
    """Serve on a free 127.0.0.1 port for the serve tests; shut down after them, so the later
    Ray Train tests in the same session get the shared 2-CPU Ray to themselves."""
    from ray import serve

    from maskunet_platform.serve.app import start_serve

    port = free_port()
    start_serve("127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def deploy(serve_url: str, source, name: str, route_prefix: str, **overrides) -> str:
    """Deploy an app with the test settings; returns its base URL once /healthz answers 200."""
    from maskunet_platform.config.serve import ServeSection
    from maskunet_platform.serve.app import run_app, wait_healthy

    raw = {**TEST_SETTINGS, **overrides, "app_name": name, "route_prefix": route_prefix}
    run_app(ServeSection.model_validate(raw), source)
    url = serve_url + route_prefix.rstrip("/")
    wait_healthy(url, timeout_s=180)
    return url


@pytest.fixture(scope="package")
def api_url(serve_url, shapes_base, mask_dirs):
    """The API app: shapes base + masks "a", at /."""
    from ray import serve

    from maskunet_platform.serve.engine import ModelSource

    url = deploy(serve_url, ModelSource(base=shapes_base, masks=mask_dirs["a"]), "api", "/")
    try:
        yield url
    finally:
        serve.delete("api")
