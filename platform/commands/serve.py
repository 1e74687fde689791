"""`maskunet serve`: the masked text-to-image HTTP service on Ray Serve, until interrupted."""
import os
import signal
import socket
import threading
from typing import Optional

import click

from maskunet_platform.console.errors import InvalidInput, RunFailure
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary


@click.command("serve")
@click.option("--base", default=None, help="base pipeline: local folder or hub id")
@click.option("--weights", "--masks", "masks", default=None, type=click.Path(exists=True, file_okay=False),
              help="trained weights of any method (masks, LoRA, full): a run's export folder <export_dir>/<run>/ "
              "or the generator/, lora/ or unet/ folder in it; --masks is the same option")
@click.option("--model", "model_uri", default=None, help="registered model: models:/NAME@ALIAS or models:/NAME/VERSION")
@click.option("--host", default=None, help="bind address (default: serve.host, 127.0.0.1)")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="HTTP port (default: serve.port, 8000)")
@click.option("-c", "--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="job config with a serve section (e.g. jobs/serve.yaml)")
@click.option("--set", "overrides", multiple=True, help="override a config field, e.g. serve.batching.max_batch_size=4")
@click.option("--tracking-uri", default=None, help="MLflow registry for --model (default: $MLFLOW_TRACKING_URI, else local)")
@click.option("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
@console_command("serve")
def serve_command(session: Session, base, masks, model_uri, host, port, config_path, overrides, tracking_uri,
                  address) -> None:
    """Serve text-to-image over HTTP (POST /v1/generate, GET / playground) until Ctrl-C / SIGTERM."""
    from maskunet_platform.config import load_job
    from maskunet_platform.serve.engine import ModelSource

    job = load_job(config_path, [*overrides, *([f"serve.host={host}"] if host else []),
                                 *([f"serve.port={port}"] if port else [])])
    settings = job.serve
    source = ModelSource(base, masks, model_uri, _registry_uri(model_uri, tracking_uri or settings.tracking_uri),
                         job.model.compile)
    ref = _check_inputs(source, settings)
    if not _port_free(settings.host, settings.port):
        raise InvalidInput(f"--port {settings.port}: already in use on {settings.host}")
    url = f"http://{_client_host(settings.host)}:{settings.port}{settings.route_prefix.rstrip('/')}"
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        with session.progress.stage("start Ray Serve"):
            _start(settings, source, address)
        _stop_on_signals(stop)  # again: ray.init may install its own SIGTERM handler
        with session.progress.stage(f"load {ref or source.describe()}"):
            _wait_loaded(url, settings)
        session.line(f"serving {ref or source.describe()} at {url}/  (playground: {url}/, API: POST {url}/v1/generate;"
                     " Ctrl-C to stop)")
        while not stop.wait(0.5):
            pass
        stats = _stats(settings.app_name)
    finally:
        with session.progress.stage("shut down Serve and Ray"):
            _shutdown()
    session.finish(_summary(stats, url, ref or source.describe()))


def _registry_uri(model_uri: Optional[str], uri: Optional[str]) -> Optional[str]:
    if not model_uri:
        return None
    from maskunet_platform.train.tracking import command_tracking, tracking_uri

    return tracking_uri(command_tracking("maskunet-serve", uri, True))


def _check_inputs(source, settings) -> Optional[str]:
    """Fail before Ray starts: one of --base/--model, a resolvable model URI, the auth token."""
    if bool(source.base) == bool(source.model_uri):
        raise InvalidInput("give --base (with optional --weights) or --model, not both")
    if source.masks and not source.base:
        raise InvalidInput("--weights needs --base (a registered --model brings its own weights)")
    env = settings.auth.token_env
    if env and not os.environ.get(env):
        raise InvalidInput(f"serve.auth.token_env: the environment variable {env} is not set (or empty)")
    if source.base and "://" not in source.base and not os.path.exists(os.path.expanduser(source.base)) \
            and source.base.startswith((".", "/", "~")):
        raise InvalidInput(f"--base {source.base}: no such folder")
    if source.masks:
        from maskunet_platform.train.base_check import BaseModelError, check_weights

        try:
            check_weights(source.masks, source.base)
        except BaseModelError as e:
            raise InvalidInput(str(e)) from None
    if not source.model_uri:
        return None
    from maskunet_platform.registry.files import ModelUriError
    from maskunet_platform.serve.registry_follow import current_version

    try:
        return str(current_version(source))
    except ModelUriError as e:
        raise InvalidInput(f"--model: {e}") from None


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT / SIGTERM end the wait below, so Serve and Ray shut down in order."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())


def _start(settings, source, address: Optional[str]) -> None:
    import ray

    from maskunet_platform.serve.app import run_app, start_serve

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        need = max(1, int(settings.cpus_per_replica + 0.999) * (settings.autoscaling.max_replicas
                                                                if settings.autoscaling else settings.num_replicas))
        ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False)
    start_serve(settings.host, settings.port)
    run_app(settings, source)


def _wait_loaded(url: str, settings, timeout_s: float = 600) -> None:
    from maskunet_platform.serve.app import wait_healthy

    try:
        wait_healthy(url, timeout_s)
    except RuntimeError as e:
        raise RunFailure(f"the model failed to load: {e}") from None
    except TimeoutError as e:
        raise RunFailure(str(e)) from None


def _stats(app_name: str) -> dict:
    from ray import serve

    try:
        return serve.get_app_handle(app_name).stats.remote().result(timeout_s=10)
    except Exception:  # noqa: BLE001 - a summary without figures beats a failed shutdown
        return {}


def _shutdown() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _percentile(values: list, q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(stats: dict, url: str, what: str) -> Summary:
    latencies = stats.get("latencies_s") or []
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    data = {"url": url, "model": what, "served": stats.get("served"), "errors": stats.get("errors"),
            "p50_s": p50, "p99_s": p99}
    summary = Summary(f"maskunet serve: stopped serving {what} at {url}/", data=data)
    summary.add("requests served:", stats.get("served", "unknown"))
    summary.add("request errors:", stats.get("errors", "unknown"))  # 4xx and 5xx the replica answered
    if p50 is not None:
        summary.add("latency:", f"p50 {p50:.3f} s, p99 {p99:.3f} s")
    return summary
