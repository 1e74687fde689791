"""The playground page in a real headless Chromium: it loads offline, a generation runs, and
both images (masks on / off, same seed) render. The screenshot is kept as a test artifact."""
import base64
import re

import pytest

from tests.serve.browser import headless_page
from tests.serve.conftest import http

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
        page.send("Page.navigate", url=api_url + "/?autorun=1")
        page.wait_for("document.body.dataset.generated === 'true'", timeout=180)
        sizes = page.evaluate("['masked', 'plain'].map(id => { const im = document.getElementById(id);"
                              " return [im.complete, im.naturalWidth, im.naturalHeight]; })")
        assert sizes == [[True, 64, 64], [True, 64, 64]], sizes
        different = page.evaluate("document.getElementById('masked').src !== document.getElementById('plain').src")
        assert different, "masks on and off gave the same image"
        assert "model: " in page.evaluate("document.getElementById('model').textContent")
        shot = page.send("Page.captureScreenshot", format="png")["data"]
    path = tmp_path / "playground.png"
    path.write_bytes(base64.b64decode(shot))
    assert path.stat().st_size > 1000
    print(f"playground screenshot: {path}")
