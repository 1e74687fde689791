"""A real HTTP proxy on 127.0.0.1 in front of the moto S3 server that answers 503 SlowDown
to chosen GET requests and forwards everything else unchanged."""
from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse
from collections import Counter

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
HOP_HEADERS = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class FlakyProxy:
    """`fail_next(n)`: the next n GETs fail; `fail_each_key(n)`: the next n GETs of every key."""

    def __init__(self, upstream_url: str):
        up = urllib.parse.urlsplit(upstream_url)
        self.upstream = (up.hostname, up.port)
        self.lock = threading.Lock()
        self.next_left, self.per_key, self.key_failures = 0, 0, Counter()
        self.failed = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_next(self, n: int) -> None:
        with self.lock:
            self.next_left, self.per_key, self.failed = n, 0, 0

    def fail_each_key(self, n: int) -> None:
        with self.lock:
            self.next_left, self.per_key, self.failed = 0, n, 0
            self.key_failures.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _should_fail(self, method: str, path: str) -> bool:
        if method != "GET":
            return False
        key = urllib.parse.urlsplit(path).path
        with self.lock:
            if self.next_left > 0:
                self.next_left -= 1
            elif self.key_failures[key] < self.per_key:
                self.key_failures[key] += 1
            else:
                return False
            self.failed += 1
            return True

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, *args) -> None:
                pass

            def _respond(self, status: int, headers: list, body: bytes, length: str | None = None) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in HOP_HEADERS:
                        self.send_header(k, v)
                self.send_header("Content-Length", length if length is not None else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._should_fail(self.command, self.path):
                    self._respond(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                    resp = conn.getresponse()
                    data = resp.read()
                    # HEAD: the object's size, not the (empty) body's.
                    length_header = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self._respond(resp.status, resp.getheaders(), data, length_header or None)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        return Handler
