"""Headless Debian Chromium driven over the Chrome DevTools protocol (websockets), for the
playground test. Playwright's browser download needs network; the system package does not."""
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from itertools import count

from tests.fixtures.debian import ensure_debian_binary
from tests.fixtures.services import free_port, stop_process_group


def ensure_chromium() -> str:
    return ensure_debian_binary("chromium", "chromium")


class Page:
    """One page target: send a CDP command and wait for its answer (events are skipped)."""

    def __init__(self, socket):
        self.socket, self.ids = socket, count(1)

    def send(self, method: str, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"{expression!r} stayed false for {timeout}s; page text: "
                           f"{self.evaluate('document.body.innerText')!r}")


@contextmanager
def headless_page():
    """A headless Chromium (own profile, own process group) and a websocket to its first page."""
    from websockets.sync.client import connect

    binary = ensure_chromium()
    port, profile = free_port(), tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--remote-debugging-port={port}", "--remote-allow-origins=*",
                             f"--user-data-dir={profile}", "--window-size=900,700", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        target = _page_target(port, proc)
        with connect(target["webSocketDebuggerUrl"], max_size=2**26) as socket:
            yield Page(socket)
    finally:
        stop_process_group(proc)
        shutil.rmtree(profile, ignore_errors=True)


def _page_target(port: int, proc, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                pages = [t for t in json.loads(response.read()) if t.get("type") == "page"]
            if pages:
                return pages[0]
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError("chromium's DevTools endpoint did not come up")
