"""Building the Serve application from the `serve` config section, and running it.

`build_app` is what `maskunet serve`, the tests and `serve deploy` (through `app_builder`,
the import path in jobs/serve-deploy.yaml) all use, so they deploy the same thing.
"""
import os
import time
import urllib.error
import urllib.request
from typing import Optional

from maskunet_platform.config.serve import ServeSection
from maskunet_platform.serve.engine import ModelSource


def deployment_options(settings: ServeSection) -> dict:
    from ray.serve.config import BackpressureConfig

    options = {
        "name": "MaskUNetService",
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=settings.retry_after_s),
        "ray_actor_options": {"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
        "health_check_period_s": 5,
    }
    if settings.autoscaling:
        options["autoscaling_config"] = settings.autoscaling.model_dump()
    else:
        options["num_replicas"] = settings.num_replicas
    return options


def build_app(settings: ServeSection, source: ModelSource):
    from maskunet_platform.serve.service import MaskUNetService

    return MaskUNetService.options(**deployment_options(settings)).bind(source, settings.model_dump(mode="json"))


def app_builder(args: dict):
    """`serve deploy` / `serve run` entry: args {base, masks | model, config, set, tracking_uri}."""
    from maskunet_platform.config import load_job

    job = load_job(args.get("config"), args.get("set") or [])
    source = ModelSource(base=_expand(args.get("base")), masks=_expand(args.get("masks")), model_uri=args.get("model"),
                         tracking_uri=args.get("tracking_uri") or job.serve.tracking_uri
                         or os.environ.get("MLFLOW_TRACKING_URI"), compile=job.model.compile)
    if not (source.base or source.model_uri):
        raise ValueError("app args: give base (and masks) or model")
    return build_app(job.serve, source)


def _expand(path: Optional[str]) -> Optional[str]:
    return os.path.expanduser(path) if path and not path.startswith(("s3://", "hf://")) else path


def start_serve(host: str, port: int) -> None:
    from ray import serve

    serve.start(http_options={"host": host, "port": port})


def run_app(settings: ServeSection, source: ModelSource):
    """Deploy the app on the running Serve instance; returns its handle once it is RUNNING."""
    from ray import serve

    return serve.run(build_app(settings, source), name=settings.app_name, route_prefix=settings.route_prefix,
                     blocking=False)


def wait_healthy(url: str, timeout_s: float, headers: Optional[dict] = None) -> dict:
    """Poll `<url>/healthz` until 200; raises TimeoutError (with the last answer) or
    RuntimeError when the model failed to load."""
    import json

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/healthz", headers=headers or {}),
                                        timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:  # 503 while loading; 404 until the route exists
            last = e.read().decode(errors="replace")
            if e.code == 503 and '"failed"' in last:
                raise RuntimeError(json.loads(last).get("error") or last) from None
        except OSError as e:
            last = str(e)
        time.sleep(0.3)
    raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout_s:.0f}s (last: {last[:300]})")
