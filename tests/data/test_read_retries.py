"""Read retries against real transient failures: a proxy answering 503 in front of moto S3.

pyarrow's S3 client already makes 3 attempts per request (measured: 3 failing GETs make
one read fail), so more than 3 failures in a row need this platform's retries.
"""
import logging

import httpx2
import pyarrow as pa
import pytest
from huggingface_hub.errors import HfHubHTTPError

from maskunet_platform.config.data import DataSection
from maskunet_platform.data.parquet_source import plan_fragments, read_fragment
from maskunet_platform.data.pipeline import build_dataset
from maskunet_platform.data.retry import DataReadError, RetryPolicy, is_transient, redact
from maskunet_platform.data.sample import write_sample
from maskunet_platform.data.stats import release_counter
from maskunet_platform.data.uri import list_parquet_files, resolve_source
from tests.data.flaky_proxy import FlakyProxy

SDK_ATTEMPTS = 3


@pytest.fixture(scope="module")
def flaky_data(s3):
    s3.create_bucket("flaky")
    write_sample("s3://flaky/data", rows=12, shards=2, seed=5)
    proxy = FlakyProxy(s3.endpoint_url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_footer_and_row_group_reads_survive_transient_errors_and_fail_clearly_when_exhausted(flaky_data, caplog):
    proxy = flaky_data
    src = resolve_source("s3://flaky/data", endpoint_url=proxy.url)
    files = list_parquet_files(src)
    policy = RetryPolicy(retries=2, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="maskunet.data"):
        proxy.fail_next(SDK_ATTEMPTS + 1)
        frags = plan_fragments(files[:1], src.filesystem, ["text"], policy)
        assert proxy.failed == SDK_ATTEMPTS + 1 and sum(f.num_rows for f in frags) == 6
        proxy.fail_next(SDK_ATTEMPTS + 1)
        rows = [t for t in read_fragment(frags[0], src.filesystem, ["text"], 4, policy)]
        assert proxy.failed == SDK_ATTEMPTS + 1 and sum(t.num_rows for t in rows) == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("parquet footer of train-00000-of-00002.parquet failed (attempt 1 of 3)" in w for w in warnings)
    assert any("row group 0 of train-00000-of-00002.parquet failed (attempt 1 of 3)" in w for w in warnings)
    assert all("SERVICE_UNAVAILABLE" in w or "SLOW_DOWN" in w for w in warnings), warnings
    assert not any(proxy.url in w or "testing" in w for w in warnings)  # no endpoint, no secret key

    proxy.fail_next(10 ** 6)
    with pytest.raises(DataReadError, match=r"row group 0 of train-00000-of-00002.parquet failed after 3 attempts "
                                            r"\(data.read_retries=2\)"):
        list(read_fragment(frags[0], src.filesystem, ["text"], 4, policy))
    assert proxy.failed == 3 * SDK_ATTEMPTS
    proxy.fail_next(0)


def test_ray_read_tasks_retry_on_workers(ray_local, flaky_data, tiny_base):
    proxy = flaky_data
    cfg = DataSection(source="s3://flaky/data", s3_endpoint_url=proxy.url, read_retries=3, read_retry_backoff_s=0.05)
    ds = build_dataset(cfg, tiny_base, counter_name="t-retry")  # planned before any failure
    proxy.fail_each_key(SDK_ATTEMPTS + 1)  # every shard's first read fails past the S3 client's own attempts
    assert ds.count() == 12 and proxy.failed == 2 * (SDK_ATTEMPTS + 1)
    ds = build_dataset(cfg.model_copy(update={"read_retries": 1}), tiny_base, counter_name="t-retry")
    proxy.fail_next(10 ** 6)
    with pytest.raises(Exception, match=r"row group 0 of train-0000[01]-of-00002.parquet failed after 2 attempts "
                                        r"\(data.read_retries=1\)"):
        ds.count()
    proxy.fail_next(0)
    release_counter("t-retry")


def test_transient_errors_are_told_apart_and_secrets_never_shown(monkeypatch):
    def hub_error(status: int) -> HfHubHTTPError:
        request = httpx2.Request("GET", "https://huggingface.co/datasets/x/resolve/main/a.parquet")
        return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=request))

    assert is_transient(hub_error(429)) and is_transient(hub_error(503)) and not is_transient(hub_error(404))
    assert is_transient(OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(pa.ArrowInvalid("bad magic"))
    assert not is_transient(OSError("AWS Error ACCESS_DENIED during GetObject operation: HTTP 403"))
    monkeypatch.setenv("HF_TOKEN", "hf_SeCrEtToKeN123")
    text = redact("503 for url: https://cas-bridge.xethub.hf.co/a.parquet?X-Amz-Signature=abc&token=x "
                  "(Authorization: Bearer hf_SeCrEtToKeN123)")
    assert "abc" not in text and "hf_SeCrEtToKeN123" not in text and "https://cas-bridge.xethub.hf.co/a.parquet" in text
