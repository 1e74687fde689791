"""The Ray Serve deployment: a FastAPI ingress over one pipeline per replica.

Routes: GET / (playground), GET /healthz, GET /v1/model, POST /v1/generate,
POST /v1/admin/reload. The model loads in a background thread, so /healthz answers 503
until it is ready; a registry alias is followed by a second thread (registry_follow.py).
"""
import asyncio
import base64
import logging
import os
import threading
import time
from collections import deque
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from maskunet_platform.config.serve import ServeSection
from maskunet_platform.serve import registry_follow
from maskunet_platform.serve.engine import LoadOptions, ModelSource, run_batch
from maskunet_platform.serve.playground import PLAYGROUND_HTML
from maskunet_platform.serve.requests import GenerateRequest, RequestError, parse_body, validate, wants_png

log = logging.getLogger("maskunet.serve")
api = FastAPI(title="MaskUNet", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request, exc):  # 404 / 405 in the same shape as every other error
    return JSONResponse({"error": {"field": None, "message": str(exc.detail)}}, status_code=exc.status_code)


def error_response(error: RequestError, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


@serve.deployment
@serve.ingress(api)
class MaskUNetService:
    def __init__(self, source: ModelSource, settings: dict):
        self.source, self.settings = source, ServeSection.model_validate(settings)
        self._load_options = LoadOptions(self.settings.batching.batch_invariant, self.settings.precision,
                                         source.compile)
        self.token = self._token(self.settings.auth.token_env)
        self.model, self.load_error = None, None
        self.served, self.errors = 0, 0
        self.latencies: deque = deque(maxlen=100_000)
        self.generate_batch.set_max_batch_size(self.settings.batching.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.settings.batching.batch_wait_timeout_s)
        self.stopping, self._reload_lock = threading.Event(), threading.Lock()
        threading.Thread(target=self._load, daemon=True, name="maskunet-load").start()

    @staticmethod
    def _token(env: Optional[str]) -> Optional[str]:
        if env is None:
            return None
        token = os.environ.get(env, "")
        if not token:  # refuse to serve without auth when auth was asked for
            raise RuntimeError(f"serve.auth.token_env: ${env} is not set (or empty) on this replica")
        return token

    def _load(self) -> None:
        import torch

        torch.set_num_threads(self.settings.torch_threads or max(1, int(self.settings.cpus_per_replica)))
        try:
            self.model = registry_follow.load_source(self.source, self._load_options)
        except Exception as e:  # noqa: BLE001 - reported by /healthz and check_health
            log.exception("loading %s failed", self.source.describe())
            self.load_error = f"{type(e).__name__}: {e}"
            return
        if self.source.model_uri and self.settings.reload_interval_s > 0:
            threading.Thread(target=self._follow, daemon=True, name="maskunet-follow").start()

    def _follow(self) -> None:
        while not self.stopping.wait(self.settings.reload_interval_s):
            try:
                self._reload()
            except Exception:  # noqa: BLE001 - an unreachable registry must not stop serving
                log.exception("checking %s failed; still serving %s", self.source.model_uri, self.model.registry)

    def _reload(self) -> bool:
        """Swap in the version the alias names now, if it moved; True when it did."""
        with self._reload_lock:
            new = registry_follow.newer_model(self.source, self.model, self._load_options)
            if new is None:
                return False
            old, self.model = self.model, new  # one reference: running batches keep theirs
            log.info("now serving %s (was %s)", new.registry, old.registry)
            registry_follow.release(old)
            return True

    def check_health(self) -> None:
        if self.load_error:
            raise RuntimeError(self.load_error)

    def stats(self) -> dict:
        return {"served": self.served, "errors": self.errors, "latencies_s": list(self.latencies)}

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[len("Bearer "):] != self.token:
            raise RequestError(401, "Authorization", "missing or wrong bearer token")

    def _ready(self):
        if self.model is None:
            message = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise RequestError(503, None, message)
        return self.model

    def _retry_after(self, error: RequestError) -> Optional[dict]:
        if error.status == 503:
            return {"Retry-After": str(max(1, round(self.settings.retry_after_s)))}
        if error.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        return None

    @api.get("/healthz")
    async def healthz(self):
        if self.model is None:
            return JSONResponse({"status": "failed" if self.load_error else "loading", "error": self.load_error},
                                status_code=503, headers={"Retry-After": "1"})
        return {"status": "ok"}

    @api.get("/")
    async def playground(self, request: Request):
        try:
            self._authorize(request)
        except RequestError as e:
            return error_response(e, self._retry_after(e))
        return HTMLResponse(PLAYGROUND_HTML)

    @api.get("/v1/model")
    async def model_info(self, request: Request):
        try:
            self._authorize(request)
            return {**self._ready().describe(), "source": self.source.describe()}
        except RequestError as e:
            return error_response(e, self._retry_after(e))

    @api.post("/v1/admin/reload")
    async def admin_reload(self, request: Request):
        try:
            self._authorize(request)
            self._ready()
            if not self.source.model_uri:
                raise RequestError(409, "model", "this service was started with --base, not a registry alias")
            changed = await asyncio.to_thread(self._reload)
        except RequestError as e:
            return error_response(e, self._retry_after(e))
        return {"changed": changed, "model": self.model.describe()}

    @api.post("/v1/generate")
    async def generate(self, request: Request):
        started = time.perf_counter()
        try:
            self._authorize(request)
            model = self._ready()
            data = parse_body(request.headers.get("content-type"), await request.body())
            job = validate(data, self.settings.limits, model.facts())
            png = wants_png(request.headers.get("accept"), job)
        except RequestError as e:
            self.errors += 1
            return error_response(e, self._retry_after(e))
        result = await self.generate_batch(job)
        if isinstance(result, Exception):
            self.errors += 1
            log.error("generation failed: %s", result)
            return JSONResponse({"error": {"field": None, "message": f"generation failed: {result}"}},
                                status_code=500)
        total = time.perf_counter() - started
        self.served += 1
        self.latencies.append(total)
        if png:
            return Response(result["pngs"][0], media_type="image/png",
                            headers={"X-Batch-Size": str(result["batch_size"]), "X-Seed": str(job.seed)})
        body = {"images": [base64.b64encode(p).decode("ascii") for p in result["pngs"]], "seed": job.seed,
                "model": result["model"], "batch_size": result["batch_size"],
                "timings": {**result["timings"], "total_s": round(total, 4)}}
        if "training_free" in result:
            body["training_free"] = result["training_free"]
        return body

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batch(self, requests: list[GenerateRequest]) -> list:
        model = self.model  # a swap during this batch does not affect it
        try:
            return await asyncio.to_thread(run_batch, model, requests)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            return [e] * len(requests)

    def __del__(self):
        self.stopping.set()

