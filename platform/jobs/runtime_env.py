"""The job's runtime environment: this repository as the working dir, or a pinned image / pip set.

Default (`repository_env`): the repository root is uploaded as `working_dir` with the
excludes below, and `platform/` is staged a second time under its import name as a
`py_modules` entry: the folder is called `platform` on disk (it must not shadow the standard
library's `platform`), so only a copy named `maskunet_platform` is importable from an upload.
The job's driver and every Ray worker of the job then run this checkout's code.

`--runtime-env FILE` (`file_env`): a YAML/JSON runtime env as Ray takes it, e.g. the project
image (`image_uri`, built by infra/Dockerfile) or a pinned `pip` list; the project is expected
there, so nothing is uploaded unless the file names a `working_dir`.

Either way, settings the job needs (MLflow, S3 endpoint, region) are forwarded by name from
the submitting shell as `env_vars`; credentials never are: Ray writes runtime envs into its
logs and shows them in the dashboard, so the cluster provides them (Kubernetes secrets,
instance roles) and `secrets_left_behind` names the ones that stayed local.
"""
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import yaml

from maskunet_platform.jobs.spec import SubmitError
from maskunet_platform.train.worker_env import SECRET_ENV, SETTING_ENV, _has_userinfo

REPO = Path(__file__).resolve().parents[2]
# gitignore-style, relative to the working dir: environments, VCS, local stores, outputs, caches.
EXCLUDES = [".git/", ".venv/", "venv/", ".pp/", "mlruns/", "mlflow.db", "out/", "build/", "dist/", "*.egg-info/",
            "__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", ".ipynb_checkpoints/",
            "node_modules/", ".cache/", "*.log", ".DS_Store"]
# Never in env_vars, whatever the job needs (Ray's own token included).
NEVER_FORWARD = (*SECRET_ENV, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MASKUNET_SERVE_TOKEN")
# The driver (maskunet train) starts Ray with these same settings as its own env_vars; Ray
# refuses to merge a driver's runtime env with the job's on equal keys unless told to.
DRIVER_MERGE = {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}


def forwarded_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """Non-secret settings set in the submitting shell; a URL with credentials in it stays local."""
    return {k: environ[k] for k in SETTING_ENV if environ.get(k) and not _has_userinfo(environ[k])}


def secrets_left_behind(environ: Mapping[str, str]) -> list[str]:
    """Names (never values) of credentials set here that the job will not receive."""
    held = [k for k in NEVER_FORWARD if environ.get(k)]
    held += [k for k in SETTING_ENV if environ.get(k) and _has_userinfo(environ[k])]
    return sorted(held)


def repository_env(environ: Mapping[str, str], use_gpu: bool, repo: Path = REPO) -> tuple[dict, Path]:
    """(runtime env, staging dir to delete after submission)."""
    staging = Path(tempfile.mkdtemp(prefix="maskunet-submit-"))
    package = staging / "maskunet_platform"
    shutil.copytree(repo / "platform", package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env_vars = forwarded_settings(environ) | DRIVER_MERGE | ({} if use_gpu else {"DS_ACCELERATOR": "cpu"})
    runtime_env = {"working_dir": str(repo), "excludes": list(EXCLUDES), "py_modules": [str(package)],
                   "env_vars": env_vars}
    return runtime_env, staging


def file_env(path: str, environ: Mapping[str, str]) -> dict:
    """A runtime env from a YAML/JSON file, plus the forwarded settings (the file's own win)."""
    source = Path(path)
    if not source.is_file():
        raise SubmitError(f"--runtime-env {path} does not exist")
    try:
        loaded = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as e:
        raise SubmitError(f"--runtime-env {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise SubmitError(f"--runtime-env {path}: a mapping of runtime-env fields (working_dir, pip, image_uri, ...)")
    _check_runtime_env(loaded, path)
    leaked = sorted(k for k in (loaded.get("env_vars") or {}) if k in NEVER_FORWARD)
    if leaked:
        raise SubmitError(f"--runtime-env {path}: env_vars.{leaked[0]} is a credential; Ray would log it. "
                          "Provide it on the cluster (a Kubernetes secret, the node's environment)")
    loaded["env_vars"] = forwarded_settings(environ) | DRIVER_MERGE | dict(loaded.get("env_vars") or {})
    return loaded


def _check_runtime_env(loaded: dict, path: str) -> None:
    """Ray's own parser names the bad field (unknown keys, a pip list of the wrong type)."""
    from ray.runtime_env import RuntimeEnv

    unknown = sorted(k for k in loaded if k not in RuntimeEnv.known_fields or k.startswith("_"))
    if unknown:  # Ray itself keeps unknown keys as plugin names; a typo would be ignored
        raise SubmitError(f"--runtime-env {path}: unknown field {unknown[0]!r} (known: working_dir, py_modules, "
                          "excludes, pip, uv, conda, image_uri, env_vars, ...)")
    try:
        RuntimeEnv(**{k: v for k, v in loaded.items() if k != "env_vars"})
    except (TypeError, ValueError) as e:
        raise SubmitError(f"--runtime-env {path}: {e}") from None
