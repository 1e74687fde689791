"""Real HTTP to a real Serve app on the pretrained shapes base (CPU): images, validation,
batching, back-pressure. One app for the module (tests/serve/conftest.py)."""
import base64
import io
import threading

import pytest
from PIL import Image

from tests.serve.conftest import http, post_json

pytestmark = pytest.mark.slow
PROMPT = "a large red circle in the center on a blue background"


def generate(url: str, **fields):
    return post_json(url + "/v1/generate", {"prompt": PROMPT, "num_inference_steps": 4, **fields})


def pngs(answer) -> list[bytes]:
    assert answer.status == 200, answer.body[:500]
    return [base64.b64decode(image) for image in answer.json()["images"]]


def test_health_model_and_unknown_routes(api_url, shapes_base, mask_dirs):
    assert http(api_url + "/healthz").json() == {"status": "ok"}
    info = http(api_url + "/v1/model").json()
    assert info["base"] == shapes_base and info["masks"] == mask_dirs["a"] and info["registry"] is None
    assert info["loaded_at"].endswith("Z")
    missing = http(api_url + "/v1/nothing")
    assert missing.status == 404 and "message" in missing.json()["error"]
    assert http(api_url + "/v1/generate").status == 405  # GET


def test_images_sizes_seeds_and_masks(api_url):
    answer = generate(api_url, seed=7, num_images=2, width=48, height=32)
    body = answer.json()
    assert body["seed"] == 7 and body["batch_size"] >= 1 and body["model"]["version"] is None
    assert set(body["timings"]) >= {"pipeline_s", "total_s"}
    images = [Image.open(io.BytesIO(png)) for png in pngs(answer)]
    assert [(im.format, im.size) for im in images] == [("PNG", (48, 32))] * 2
    assert images[0].tobytes() != images[1].tobytes()  # image i has seed + i

    masked = pngs(generate(api_url, seed=3))[0]
    assert pngs(generate(api_url, seed=3))[0] == masked  # same seed: same bytes
    assert pngs(generate(api_url, seed=4))[0] != masked
    plain = pngs(generate(api_url, seed=3, masks=False))[0]
    assert plain != masked  # the masks change the image
    assert Image.open(io.BytesIO(plain)).size == (64, 64)  # the model's default size

    raw = post_json(api_url + "/v1/generate", {"prompt": PROMPT, "num_inference_steps": 4, "seed": 3},
                    headers={"Accept": "image/png"})
    assert raw.status == 200 and raw.headers["content-type"] == "image/png" and raw.body == masked


MALFORMED = [  # (body or raw bytes, content type, status, field)
    ({"num_inference_steps": 4}, None, 422, "prompt"),
    ({"prompt": ""}, None, 422, "prompt"),
    ({"prompt": "   "}, None, 422, "prompt"),
    ({"prompt": 5}, None, 422, "prompt"),
    ({"prompt": ["a", "b"]}, None, 422, "prompt"),
    ({"prompt": "a red circle " * 40}, None, 422, "prompt"),  # beyond the tokenizer's 77
    ({"prompt": "a", "negative_prompt": 3}, None, 422, "negative_prompt"),
    ({"prompt": "a", "num_inference_steps": 0}, None, 422, "num_inference_steps"),
    ({"prompt": "a", "num_inference_steps": 31}, None, 422, "num_inference_steps"),
    ({"prompt": "a", "num_inference_steps": "4"}, None, 422, "num_inference_steps"),
    ({"prompt": "a", "num_inference_steps": 4.5}, None, 422, "num_inference_steps"),
    ({"prompt": "a", "guidance_scale": -1}, None, 422, "guidance_scale"),
    ({"prompt": "a", "guidance_scale": 21}, None, 422, "guidance_scale"),
    ({"prompt": "a", "guidance_scale": "high"}, None, 422, "guidance_scale"),
    ({"prompt": "a", "guidance_scale": True}, None, 422, "guidance_scale"),
    ({"prompt": "a", "num_images": 0}, None, 422, "num_images"),
    ({"prompt": "a", "num_images": 5}, None, 422, "num_images"),
    ({"prompt": "a", "width": 65}, None, 422, "width"),
    ({"prompt": "a", "height": 60}, None, 422, "height"),
    ({"prompt": "a", "width": 16}, None, 422, "width"),
    ({"prompt": "a", "height": 256}, None, 422, "height"),
    ({"prompt": "a", "width": "64"}, None, 422, "width"),
    ({"prompt": "a", "seed": -1}, None, 422, "seed"),
    ({"prompt": "a", "seed": 1.5}, None, 422, "seed"),
    ({"prompt": "a", "masks": "yes"}, None, 422, "masks"),
    ({"prompt": "a", "steps": 4}, None, 422, "steps"),  # unknown field
    ({"prompt": "a", "training_free": "yes"}, None, 422, "training_free"),
    ({"prompt": "a", "training_free": {"iters": 1}}, None, 422, "training_free.iters"),
    ({"prompt": "a", "training_free": {"iterations": 1000}}, None, 422, "training_free.iterations"),
    ({"prompt": "a", "training_free": {"schedule": "1x99"}}, None, 422, "training_free.schedule"),
    ({"prompt": "a", "num_inference_steps": 25, "training_free": {"schedule": "10"}}, None, 422,
     "training_free.schedule"),  # 250 iterations: beyond the service's bound
    ({"prompt": "a", "training_free": {"lr": 0}}, None, 422, "training_free.lr"),
    ({"prompt": "a", "training_free": True, "masks": True}, None, 422, "masks"),
    ({"prompt": "a", "training_free": True, "num_images": 2}, None, 422, "num_images"),
    (b"", None, 400, "body"),
    (b"{\"prompt\": ", None, 400, "body"),
    (b"[1, 2]", None, 400, "body"),
    (b"\"a prompt\"", None, 400, "body"),
    ({"prompt": "a"}, "text/plain", 415, "Content-Type"),
    ({"prompt": "a"}, "", 415, "Content-Type"),
]


def test_malformed_requests_get_4xx_naming_the_field(api_url):
    assert len(MALFORMED) >= 20
    for payload, content_type, status, field in MALFORMED:
        body = payload if isinstance(payload, bytes) else __import__("json").dumps(payload).encode()
        headers = {"Content-Type": "application/json" if content_type is None else content_type}
        answer = http(api_url + "/v1/generate", "POST", body, headers)
        assert answer.status == status, (payload, answer.status, answer.body)
        error = answer.json()["error"]
        assert error["field"] == field and error["message"], (payload, error)
    png_many = post_json(api_url + "/v1/generate", {"prompt": "a", "num_images": 2}, headers={"Accept": "image/png"})
    assert png_many.status == 406 and png_many.json()["error"]["field"] == "num_images"
    assert generate(api_url, seed=1).status == 200  # still answering


def test_training_free_requests_optimise_their_own_masks(api_url):
    """`training_free` runs the per-step mask optimisation on the replica's pipeline (whose
    trained masks it pauses): deterministic per seed, and the served masks are unaffected."""
    masked = pngs(generate(api_url, seed=5))[0]
    optimised = generate(api_url, seed=5, training_free={"iterations": 1})
    report = optimised.json()["training_free"]
    assert report["iterations"] == 4 and len(report["reward_before"]) == 4 and report["rewards"] == ["shapes"]
    assert 0 < report["drop_fraction_last_step"] < 0.5
    assert pngs(generate(api_url, seed=5, training_free={"iterations": 1})) == pngs(optimised)
    unoptimised = pngs(generate(api_url, seed=5, training_free={"iterations": 0}))
    assert unoptimised != pngs(optimised)  # the optimised masks change the image
    assert pngs(generate(api_url, seed=5))[0] == masked  # trained masks back for plain requests


def _concurrently(fn, count: int) -> list:
    results: list = [None] * count
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn(i))) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_are_batched_and_equal_their_unbatched_result(api_url):
    prompts = [PROMPT, "a small green square at the top left on a white background", "a ring", "a yellow cross"]
    requests = [{"prompt": prompts[i % 4], "seed": 100 + i, "negative_prompt": "blue" if i % 2 else ""}
                for i in range(8)]
    batched = _concurrently(lambda i: generate(api_url, **requests[i]), len(requests))
    assert [a.status for a in batched] == [200] * len(batched), [(a.status, a.body[:300]) for a in batched]
    sizes = [answer.json()["batch_size"] for answer in batched]
    assert max(sizes) > 1, sizes
    for request, answer in zip(requests, batched):
        alone = generate(api_url, **request)  # sequential: each in a pipeline call of its own
        assert alone.json()["batch_size"] == 1
        assert pngs(alone) == pngs(answer), (request, answer.json()["batch_size"])


def test_overload_answers_503_with_retry_after_and_recovers(api_url):
    answers = _concurrently(lambda i: generate(api_url, seed=i, num_inference_steps=10), 40)
    statuses = [a.status for a in answers]
    rejected = [a for a in answers if a.status == 503]
    assert rejected and statuses.count(200) >= 4, statuses
    assert set(statuses) <= {200, 503}, statuses
    assert all(a.headers.get("retry-after") or a.headers.get("Retry-After") for a in rejected)
    assert generate(api_url, seed=5).status == 200


def test_a_model_that_fails_to_load_answers_503(serve_url, tmp_path):
    from ray import serve

    from maskunet_platform.config.serve import ServeSection
    from maskunet_platform.serve.app import run_app, wait_healthy
    from maskunet_platform.serve.engine import ModelSource

    run_app(ServeSection(app_name="broken", route_prefix="/broken", cpus_per_replica=0),
            ModelSource(base=str(tmp_path / "no-such-base")))
    try:
        with pytest.raises(RuntimeError, match="no-such-base"):
            wait_healthy(serve_url + "/broken", timeout_s=60)
        assert generate(serve_url + "/broken", seed=1).status == 503
    finally:
        serve.delete("broken")
