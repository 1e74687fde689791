"""Which run `maskunet train` trains: run names, config fingerprints and run records.

Re-running a job is unsurprising:
- The default run name is `<job name>-<fingerprint>`, the fingerprint a short hash of the
  config fields that change what training computes. A changed hyperparameter is a new run.
- The same config with an unfinished run (killed, failed, a cluster retry) resumes it from its
  newest checkpoint: Ray Train and the MLflow run are found by that name.
- The same config with a finished run reports that run's results and does not train again;
  `--resume RUN` extends a run (more train.steps), `--new` starts a new attempt
  (`<name>-2`, `-3`, ...; the newest attempt is the one a plain re-run finds).
An explicit `train.run_name` replaces the default name (cluster retries keep working).

Each run keeps a small record, `maskunet_run.json`, in its folder under train.storage_path
(local or s3://): status, fingerprint, and once finished its results.
"""
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Optional

from maskunet_platform.config import JobConfig

RECORD_FILE = "maskunet_run.json"
# Fields that do not change what training computes: where outputs go, how often it logs and
# checkpoints, how Ray schedules the work, evaluation and samples after training, tracking.
NOT_TRAINING = (
    "name", "tracking", "serve", "model.create_tiny_if_missing", "model.compile",
    "data.parallelism", "data.preprocess_batch_size", "data.read_retries", "data.read_retry_backoff_s",
    "data.s3_endpoint_url", "data.encode_actors", "data.encode_device", "data.encode_gpu_fraction",
    "train.cpus_per_worker", "train.backend", "train.max_failures", "train.storage_path", "train.run_name",
    "train.export_dir", "train.log_every", "train.checkpoint_every", "train.checkpoints_to_keep",
    "train.gradient_checkpointing", "train.eval", "train.samples",
)


class RunSelectionError(ValueError):
    """--resume / --new cannot be honoured (no such run, nothing left to train)."""


@dataclass
class RunPlan:
    run_name: str
    action: str  # "new" | "resume" | "extend" | "finished"
    why: str  # one sentence for the console: what happens and why
    fingerprint: str
    record: Optional[dict] = None  # the run's record when it exists
    warning: Optional[str] = None  # e.g. an explicit run name whose config changed


def config_fingerprint(job: JobConfig) -> str:
    """8 hex digits over the training-relevant config (see NOT_TRAINING)."""
    values = job.model_dump(mode="json")
    for dotted in NOT_TRAINING:
        *parents, leaf = dotted.split(".")
        node = values
        for key in parents:
            node = node[key]
        node.pop(leaf, None)
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def plan_run(job: JobConfig, resume: Optional[str] = None, new: bool = False) -> RunPlan:
    """Decide the run name and whether it is new, resumed, extended or already finished."""
    if resume and new:
        raise RunSelectionError("--resume and --new exclude each other")
    fingerprint = config_fingerprint(job)
    storage = RunStorage(job)
    if resume:
        return _plan_explicit_resume(job, storage, resume, fingerprint)
    family = job.train.run_name or f"{job.name}-{fingerprint}"
    attempts = storage.attempts(family)
    if new:
        name = f"{family}-{attempts[-1][0] + 1}" if attempts else family
        kept = f"; {attempts[-1][1]} is kept" if attempts else ""
        return RunPlan(name, "new", f"new run {name} (--new){kept}", fingerprint)
    if not attempts:
        return RunPlan(family, "new", _why_new(job, storage, family), fingerprint)
    name = attempts[-1][1]
    record = storage.record(name)
    warning = None
    if job.train.run_name and record and record.get("fingerprint") not in (None, fingerprint):
        warning = (f"the config differs from run {name}'s, which train.run_name names: continuing it; "
                   "use --new for a fresh run")
    if record and record.get("status") == "finished":
        when = record.get("finished_at", "earlier")
        return RunPlan(name, "finished", f"run {name} finished at {when}; not trained again "
                       f"(--resume {name} with a larger train.steps extends it, --new starts over)",
                       fingerprint, record, warning)
    step = storage.checkpoint_step(name, job.train.num_workers)
    failed = f", which failed: {record['error']}" if record and record.get("status") == "failed" else ""
    where = f" from step {step}" if step else " (no checkpoint yet: from the start)"
    return RunPlan(name, "resume", f"resuming unfinished run {name}{where}{failed}", fingerprint, record, warning)


def _plan_explicit_resume(job: JobConfig, storage: "RunStorage", name: str, fingerprint: str) -> RunPlan:
    record = storage.record(name)
    if record is None and not storage.exists(name):
        raise RunSelectionError(f"--resume {name}: no run of that name under train.storage_path "
                                f"{job.train.storage_path}")
    step = storage.checkpoint_step(name, job.train.num_workers)
    if record and record.get("status") == "finished":
        if job.train.steps <= step:
            raise RunSelectionError(f"--resume {name}: the run finished at step {step}; set train.steps "
                                    f"above that to extend it (e.g. --set train.steps={2 * step})")
        return RunPlan(name, "extend", f"extending finished run {name} from step {step} to {job.train.steps} "
                       "(--resume)", fingerprint, record)
    return RunPlan(name, "resume", f"resuming run {name} from step {step} (--resume)", fingerprint, record)


def _why_new(job: JobConfig, storage: "RunStorage", name: str) -> str:
    others = storage.other_runs_of(job.name, name)
    if not others:
        return f"new run {name}"
    latest = others[-1]
    return (f"new run {name}: the config differs from job {job.name}'s earlier run {latest}"
            + (f" (and {len(others) - 1} more)" if len(others) > 1 else ""))


class RunStorage:
    """Run folders under train.storage_path (local or s3://), read without creating anything."""

    def __init__(self, job: JobConfig):
        import pyarrow.fs as pafs

        from maskunet_platform.train.launcher import storage_location

        self.root, fs = storage_location(job.train.storage_path, job.data.s3_endpoint_url, create=False)
        self.fs = fs or pafs.LocalFileSystem()

    def _folders(self) -> list:
        import pyarrow.fs as pafs

        entries = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return [e for e in entries if e.type == pafs.FileType.Directory]

    def attempts(self, family: str) -> list[tuple[int, str]]:
        """Existing run folders `family` (1), `family-2` (2), ... as (attempt, name), in order."""
        pattern = re.compile(rf"^{re.escape(family)}(?:-(\d+))?$")
        return sorted((int(m.group(1) or 1), e.base_name) for e in self._folders()
                      if (m := pattern.match(e.base_name)))

    def other_runs_of(self, job_name: str, exclude: str) -> list[str]:
        """Runs with the default name of `job_name` but another fingerprint, oldest first."""
        pattern = re.compile(rf"^{re.escape(job_name)}-[0-9a-f]{{8}}(?:-\d+)?$")
        runs = [e.base_name for e in self._folders() if pattern.match(e.base_name) and e.base_name != exclude]
        started = {name: (self.record(name) or {}).get("started_at", "") for name in runs[:50]}
        return sorted(started, key=lambda name: started[name])

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.root}/{name}").type == pafs.FileType.Directory

    def record(self, name: str) -> Optional[dict]:
        try:
            with self.fs.open_input_stream(f"{self.root}/{name}/{RECORD_FILE}") as f:
                return json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return None

    def checkpoint_step(self, name: str, world_size: int) -> int:
        """Step of the run's newest complete checkpoint (0 without one)."""
        from maskunet_platform.train.recovery import _newest_complete_folder, checkpoint_step

        folder = _newest_complete_folder(self.fs, f"{self.root}/{name}", world_size)
        return checkpoint_step(folder) if folder else 0

    def write_record(self, name: str, **fields) -> dict:
        """Merge `fields` into the run's record."""
        record = (self.record(name) or {}) | fields
        self.fs.create_dir(f"{self.root}/{name}", recursive=True)
        with self.fs.open_output_stream(f"{self.root}/{name}/{RECORD_FILE}") as f:
            f.write(json.dumps(record, indent=1, default=str).encode())
        return record


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
