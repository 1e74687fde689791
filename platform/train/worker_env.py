"""What Ray workers inherit from the driver: settings and credentials from its environment.

Credentials are never put into `runtime_env["env_vars"]`: Ray records the runtime env in
plain text (the runtime-env agent logs "Creating runtime env: ..." on every node, and the
dashboard shows it; ray-project/ray#28276, #39502). They travel inside a
`worker_process_setup_hook` instead: Ray pickles the function into its internal KV store and
the runtime env only names it; every worker process of the job (Train workers and Ray Data
tasks alike) runs it at start-up. Ray Client (`ray://`) does not support that hook, so
there only non-secret settings are forwarded and the driver warns which credentials were not.
"""
import logging
import os
from typing import Mapping, Optional

from maskunet_platform.config import ConfigError, JobConfig

log = logging.getLogger(__name__)

# Forwarded when set on the driver. SECRET ones never go into env_vars.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SETTING_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_TRACKING_URI")


def worker_runtime_env(use_gpu: bool, address: Optional[str], environ: Optional[Mapping[str, str]] = None) -> dict:
    """The job-level runtime_env for `ray.init`: plain settings as env_vars, credentials in a setup hook."""
    environ = os.environ if environ is None else environ
    env_vars = {} if use_gpu else {"DS_ACCELERATOR": "cpu"}
    forwarded = {k: environ[k] for k in (*SECRET_ENV, *SETTING_ENV) if environ.get(k)}
    secret = {k: v for k, v in forwarded.items() if k in SECRET_ENV or _has_userinfo(v)}
    env_vars |= {k: v for k, v in forwarded.items() if k not in secret}
    runtime_env: dict = {"env_vars": env_vars}
    if not secret:
        return runtime_env
    if address and address.startswith("ray://"):
        log.warning("Ray Client (%s) cannot forward credentials without Ray logging them; not forwarded: %s. "
                    "Provide them on the cluster, or submit with `ray job submit`.", address, ", ".join(sorted(secret)))
        return runtime_env
    runtime_env["worker_process_setup_hook"] = _environment_setter(secret)
    return runtime_env


def _has_userinfo(value: str) -> bool:
    """A URL with `user:password@` in it (a tracking URI can carry credentials)."""
    return "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]


def _environment_setter(values: dict[str, str]):
    def maskunet_forward_credentials() -> None:  # Ray shows this name, never the values
        os.environ.update(values)

    return maskunet_forward_credentials


def check_cluster_tracking(job: JobConfig, address: Optional[str], environ: Optional[Mapping[str, str]] = None) -> None:
    """On a cluster, the embedded sqlite store would be a path on the driver's disk that no
    worker can reach: refuse before anything starts."""
    environ = os.environ if environ is None else environ
    if not address or address == "local" or not job.tracking.enabled:
        return
    if job.tracking.tracking_uri or environ.get("MLFLOW_TRACKING_URI"):
        return
    raise ConfigError(f"tracking.tracking_uri: unset (and no MLFLOW_TRACKING_URI) while joining the Ray cluster "
                      f"at {address}; workers cannot reach the driver-local sqlite store. Set it to the MLflow "
                      "server's URL, or tracking.enabled=false")
