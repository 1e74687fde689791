"""Retries for remote parquet reads: transient errors only, exponential backoff with jitter.

A Hub 429 or an S3 503 must not fail the whole dataset (and with it every trainer).
pyarrow's S3 client already retries a request 3 times within a few seconds; this layer
retries the whole footer or row-group read on top of that, over tens of seconds, which
is what rate limits and brief outages need. Permanent errors (missing file, access
denied, corrupt parquet) fail at once.

Log lines and error messages never carry credentials: URL query strings (signed CDN
URLs carry signatures there) and the values of credential environment variables are
masked, and files are named by their basename only.
"""
from __future__ import annotations

import logging
import os
import random
import re
import time
from dataclasses import dataclass

log = logging.getLogger("maskunet.data")

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# What pyarrow's S3 client (AWS SDK error names, HTTP codes) and HTTP clients say on a
# transient failure; pyarrow raises a plain OSError carrying only this text.
TRANSIENT_TEXT = re.compile(
    r"SLOW_DOWN|SlowDown|SERVICE_UNAVAILABLE|ServiceUnavailable|THROTTL|Throttl|INTERNAL_FAILURE|"
    r"NETWORK_CONNECTION|REQUEST_TIMEOUT|RequestTimeout|Too Many Requests|timed out|[Tt]imeout|"
    r"Connection (?:reset|refused|aborted)|curlCode|HTTP (?:status|response code:?) (?:429|5\d\d)|"
    r"\b(?:429|500|502|503|504)\b")
PERMANENT_TEXT = re.compile(r"NO_SUCH|NoSuch|ACCESS_DENIED|AccessDenied|\b(?:401|403|404)\b")
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_ACCESS_KEY_ID")
URL_QUERY = re.compile(r"(https?://[^\s?'\"<>]+)\?[^\s'\"<>]*")
MAX_DELAY_S = 60.0


class DataReadError(OSError):
    """A read that kept failing with transient errors; the message says what and why."""


def redact(text: str) -> str:
    """`text` without URL query strings or the values of credential environment variables."""
    text = URL_QUERY.sub(r"\1?<redacted>", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "<redacted>")
    return text


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: throttling, 5xx, timeouts, dropped connections."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in TRANSIENT_STATUS
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if not isinstance(exc, OSError):  # e.g. pyarrow.ArrowInvalid: a corrupt file stays corrupt
        return False
    text = str(exc)
    return bool(TRANSIENT_TEXT.search(text)) and not PERMANENT_TEXT.search(text)


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra attempts after the first; delays base * 2^k, capped, times 0.5-1.5."""
    retries: int = 5
    backoff_s: float = 1.0

    def delay(self, attempt: int) -> float:
        return min(MAX_DELAY_S, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)

    def handle(self, exc: Exception, attempt: int, what: str) -> None:
        """After failed attempt number `attempt` (1-based): sleep and return to retry, or raise."""
        if not is_transient(exc):
            raise exc  # permanent: unchanged, at once
        reason = redact(f"{type(exc).__name__}: {exc}")
        if attempt > self.retries:
            raise DataReadError(f"{what} failed after {attempt} attempts "
                                f"(data.read_retries={self.retries}): {reason}") from exc
        pause = self.delay(attempt)
        log.warning("data: %s failed (attempt %d of %d), retrying in %.1fs: %s",
                    what, attempt, self.retries + 1, pause, reason)
        time.sleep(pause)


def call_with_retries(fn, what: str, policy: RetryPolicy):
    """`fn()`, retried on transient errors according to `policy`."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # classified in policy.handle: permanent ones re-raise at once
            policy.handle(exc, attempt, what)
