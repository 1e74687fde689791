"""The playground page in a real headless Chromium: it loads offline, a generation runs, and
it shows what is served: tuned and base images (same seed) for masks or a LoRA export, the
base's image alone for a bare base; 64 px samples scaled up 4x. The screenshot is kept."""
import base64
import re

import pytest

from tests.serve.browser import headless_page
from tests.serve.conftest import deploy, http

pytestmark = pytest.mark.slow


def test_page_has_no_external_assets(api_url):
    page = http(api_url + "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external asset in the playground"
    assert "@import" not in html and "url(http" not in html


def test_playground_generates_both_images_in_chromium(api_url, tmp_path):
    with headless_page() as page:
        page.send("Page.enable")
        _generate_on(page, api_url)
        assert _images(page) == [["tuned", True, 64, 256], ["plain", True, 64, 256]]
        assert page.evaluate("document.getElementById('tuned-caption').textContent") == "masks on"
        different = page.evaluate("document.getElementById('tuned').src !== document.getElementById('plain').src")
        assert different, "masks on and off gave the same image"
        assert "model: " in page.evaluate("document.getElementById('model').textContent")
        shot = page.send("Page.captureScreenshot", format="png")["data"]
    path = tmp_path / "playground.png"
    path.write_bytes(base64.b64decode(shot))
    assert path.stat().st_size > 1000
    print(f"playground screenshot: {path}")


def _generate_on(page, url: str) -> None:
    """Open the playground at `url` with autorun and wait until its images are in."""
    page.send("Page.navigate", url=url + "/?autorun=1")
    page.wait_for("document.body.dataset.generated === 'true'", timeout=180)


def _images(page) -> list:
    """[id, loaded, natural width, shown width] of every image on the page."""
    return page.evaluate("[...document.querySelectorAll('img')].map(im => [im.id, im.complete, im.naturalWidth,"
                         " im.width])")


def test_playground_shows_a_lora_beside_its_base_and_a_bare_base_alone(serve_url, shapes_base, lora_export):
    from ray import serve

    from maskunet_platform.serve.engine import ModelSource

    lora = deploy(serve_url, ModelSource(base=shapes_base, masks=lora_export), "lora", "/lora")
    bare = deploy(serve_url, ModelSource(base=shapes_base), "bare", "/bare")
    try:
        with headless_page() as page:
            page.send("Page.enable")
            _generate_on(page, lora)
            assert _images(page) == [["tuned", True, 64, 256], ["plain", True, 64, 256]]
            assert page.evaluate("document.getElementById('tuned-caption').textContent") == "LoRA on"
            assert page.evaluate("document.getElementById('tuned').src !== document.getElementById('plain').src")
            _generate_on(page, bare)
            assert _images(page) == [["plain", True, 64, 256]]
            assert "nothing to compare" in page.evaluate("document.getElementById('compare').textContent")
            assert "error" not in page.evaluate("document.getElementById('status').className")
    finally:
        serve.delete("lora")
        serve.delete("bare")
