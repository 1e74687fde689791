"""One submission: check the spec, build the runtime env, hand the job to the job server."""
import getpass
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from maskunet_platform.jobs import client as jobs_client
from maskunet_platform.jobs.runtime_env import REPO, file_env, repository_env, secrets_left_behind
from maskunet_platform.jobs.spec import JobSpec, prepare


@dataclass
class Request:
    spec_file: str
    kind: Optional[str] = None
    overrides: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    address: Optional[str] = None
    runtime_env_file: Optional[str] = None
    submission_id: Optional[str] = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass
class Planned:
    spec: JobSpec
    address: str
    runtime_env: dict
    submission_id: str
    secrets_held: list[str]
    staging: Optional[Path] = None

    def describe_env(self) -> dict:
        """The runtime env as the user may see it: env var names, never values."""
        shown = {k: v for k, v in self.runtime_env.items() if k != "env_vars"}
        shown["env_vars"] = sorted(self.runtime_env.get("env_vars") or {})
        return shown


def plan(request: Request) -> Planned:
    """Everything local: address, spec, runtime env. Raises before any cluster contact."""
    address = jobs_client.job_server_address(request.address)
    working_dir = None if request.runtime_env_file else REPO
    spec = prepare(request.spec_file, request.kind, request.overrides, request.extra_args, working_dir,
                   address, request.environ)
    staging = None
    if request.runtime_env_file:
        runtime_env = file_env(request.runtime_env_file, request.environ)
    else:
        runtime_env, staging = repository_env(request.environ, spec.job.train.use_gpu)
    submission_id = request.submission_id or f"maskunet-{spec.kind}-{spec.job.name}-{uuid.uuid4().hex[:8]}"
    return Planned(spec, address, runtime_env, submission_id, secrets_left_behind(request.environ), staging)


def submit(planned: Planned, client) -> str:
    """Upload (working dir, staged package) and submit; the staging copy is removed after."""
    metadata = {"maskunet.kind": planned.spec.kind, "maskunet.spec": planned.spec.spec_path,
                "maskunet.job": planned.spec.job.name, "maskunet.submitted_by": _user()}
    try:
        return jobs_client.call("submit", client.submit_job, entrypoint=planned.spec.entrypoint,
                                runtime_env=planned.runtime_env, submission_id=planned.submission_id,
                                metadata=metadata)
    finally:
        if planned.staging is not None:
            shutil.rmtree(planned.staging, ignore_errors=True)


def _user() -> str:
    try:
        return os.environ.get("MASKUNET_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"
