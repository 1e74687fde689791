"""Serving `models:/NAME@champion` from a real MLflow server, and following the alias when
it moves: a client polling throughout sees no failed request, then the new version.
Also `maskunet generate --model` with the same URIs."""
import threading
import time

import pytest

from tests.fixtures.cli import maskunet_env, run_maskunet
from tests.serve.conftest import deploy, http, post_json

pytestmark = pytest.mark.slow
MODEL = "serve-follow"
REQUEST = {"prompt": "a large red circle in the center on a blue background", "num_inference_steps": 3, "seed": 11}


@pytest.fixture(scope="module")
def registered(mlflow_server, shapes_base, mask_dirs, tmp_path_factory):
    """Versions 1 (masks a) and 2 (masks b) of MODEL, registered the way training does; @champion -> 1."""
    from mlflow import MlflowClient

    from maskunet_platform.registry.register import log_and_register

    client = MlflowClient(mlflow_server.tracking_uri)
    experiment = client.create_experiment(f"serve-follow-{time.time_ns()}")
    versions = {}
    for name in ("a", "b"):
        run = client.create_run(experiment)
        work = tmp_path_factory.mktemp(f"register-{name}")
        version = log_and_register(run.info.run_id, mlflow_server.tracking_uri, MODEL, shapes_base, mask_dirs[name],
                                   {"masks": name}, {"num_inference_steps": 3, "guidance_scale": 7.5}, work)
        client.set_terminated(run.info.run_id)
        versions[name] = str(version.version)
    client.set_registered_model_alias(MODEL, "champion", versions["a"])
    return client, versions


@pytest.fixture(scope="module")
def follow_url(serve_url, registered, mlflow_server):
    from ray import serve

    from maskunet_platform.serve.engine import ModelSource

    source = ModelSource(model_uri=f"models:/{MODEL}@champion", tracking_uri=mlflow_server.tracking_uri)
    url = deploy(serve_url, source, "follow", "/follow", reload_interval_s=1.0)
    try:
        yield url
    finally:
        serve.delete("follow")


def _poll(url: str, stop: threading.Event, seen: list) -> None:
    while not stop.is_set():
        answer = post_json(url + "/v1/generate", REQUEST, timeout=120)
        version = answer.json()["model"]["version"] if answer.status == 200 else None
        seen.append((answer.status, version, answer.body if answer.status != 200 else answer.json()["images"][0]))


def test_alias_is_served_and_followed_without_failed_requests(follow_url, registered):
    client, versions = registered
    info = http(follow_url + "/v1/model").json()
    assert info["registry"] == {"name": MODEL, "version": versions["a"], "alias": "champion"}
    first = post_json(follow_url + "/v1/generate", REQUEST).json()
    assert first["model"]["version"] == versions["a"]

    seen: list = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(follow_url, stop, seen))
    poller.start()
    try:
        while len(seen) < 2:
            time.sleep(0.2)
        client.set_registered_model_alias(MODEL, "champion", versions["b"])  # promotion
        deadline = time.monotonic() + 120
        while http(follow_url + "/v1/model").json()["registry"]["version"] != versions["b"]:
            assert time.monotonic() < deadline, "the service never switched to the new version"
            time.sleep(0.5)
        count = len(seen)
        while len(seen) < count + 2:
            time.sleep(0.2)
    finally:
        stop.set()
        poller.join()
    statuses = [status for status, _, _ in seen]
    assert statuses == [200] * len(seen), [(s, b[:200]) for s, _, b in seen if s != 200]
    served = [version for _, version, _ in seen]
    switch = served.index(versions["b"])
    assert set(served[:switch]) == {versions["a"]} and set(served[switch:]) == {versions["b"]}, served
    old_image, new_image = seen[0][2], seen[-1][2]
    assert old_image == first["images"][0] and new_image != old_image  # same request, other masks


def test_admin_reload_switches_now(follow_url, registered):
    client, versions = registered
    client.set_registered_model_alias(MODEL, "champion", versions["a"])
    answer = http(follow_url + "/v1/admin/reload", "POST")
    assert answer.status == 200 and answer.json()["model"]["registry"]["version"] == versions["a"]
    assert post_json(follow_url + "/v1/generate", REQUEST).json()["model"]["version"] == versions["a"]


def test_generate_cli_accepts_model_uri(registered, mlflow_server, tmp_path):
    from PIL import Image

    env = maskunet_env(MLFLOW_TRACKING_URI=mlflow_server.tracking_uri)
    out = tmp_path / "out.png"
    result = run_maskunet(["generate", "a ring", "--model", f"models:/{MODEL}/2", "--steps", "3", "--out", str(out)],
                          env)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    bad = run_maskunet(["generate", "a ring", "--model", f"models:/{MODEL}@nosuchalias", "--out", str(out)], env)
    assert bad.returncode == 2 and "--model" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
