"""What `maskunet submit` runs on the cluster: the job spec checked here first, then the
same `maskunet <kind> -c SPEC --set ...` command as the job's entrypoint.

Everything that can be wrong with the spec fails locally (exit 2, naming the field) before
the cluster is contacted, exactly as `maskunet train` / `sweep` would fail on the cluster."""
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from maskunet_platform.config import ConfigError, JobConfig, load_job

KINDS = ("train", "sweep", "eval")
REPO = Path(__file__).resolve().parents[2]
# Where infra/Dockerfile puts this repository in the project image.
IMAGE_ROOT = "/app"
# The job's driver is this CLI: `python -m` works whether the cluster image installed the
# project (infra/Dockerfile) or the runtime env uploaded it (py_modules, see runtime_env.py).
CLI = "python -m maskunet_platform.cli"


class SubmitError(ConfigError):
    """A submission that cannot run: bad spec, bad kind, spec outside the uploaded folder."""


@dataclass
class JobSpec:
    kind: str
    job: JobConfig
    spec_path: str  # as the entrypoint names it: relative to the working dir, or a path on the cluster
    overrides: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = field(default_factory=tuple)  # after `--`, passed to the command

    @property
    def entrypoint(self) -> str:
        args = [*self.kind.split(), "-c", self.spec_path]
        for item in self.overrides:
            args += ["--set", item]
        return " ".join([CLI, *(shlex.quote(a) for a in (*args, *self.extra_args))])


def infer_kind(job: JobConfig) -> str:
    """A spec with a search space is a sweep; anything else trains."""
    return "sweep" if job.tune.search_space else "train"


def prepare(spec_file: str, kind: Optional[str], overrides: tuple[str, ...], extra_args: tuple[str, ...],
            working_dir: Optional[Path], address: Optional[str], environ) -> JobSpec:
    """Validate the spec as the cluster will read it; `working_dir` is the folder that will be
    uploaded (None: the project image brings code and specs, at IMAGE_ROOT)."""
    path = Path(spec_file)
    if not path.is_file():
        raise SubmitError(f"job spec {spec_file} does not exist")
    spec_path = _spec_path_on_cluster(path, working_dir)
    job = load_job(path, overrides)
    kind = kind or infer_kind(job)
    if kind not in KINDS:
        raise SubmitError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    _check_kind(job, kind, extra_args)
    if working_dir is not None:  # an image's nodes may set MLFLOW_TRACKING_URI themselves (clusters/)
        _check_cluster_side(job, address, environ)
    return JobSpec(kind, job, spec_path, tuple(overrides), tuple(extra_args))


def _check_kind(job: JobConfig, kind: str, extra_args: tuple[str, ...]) -> None:
    if kind == "sweep":
        from maskunet_platform.tune.space import check_search_space

        if not job.tune.search_space:
            raise SubmitError("tune.search_space: empty; a sweep needs at least one swept field")
        check_search_space(job)
    if kind == "eval" and not {"--weights", "--masks"} & set(extra_args):
        raise SubmitError("--kind eval needs the trained weights: maskunet submit SPEC --kind eval -- --weights DIR")


def _check_cluster_side(job: JobConfig, address: Optional[str], environ) -> None:
    """The job's driver joins the cluster, so the embedded sqlite store cannot be used there."""
    from maskunet_platform.train.worker_env import check_cluster_tracking

    check_cluster_tracking(job, address or "cluster", environ)


def _spec_path_on_cluster(path: Path, working_dir: Optional[Path]) -> str:
    """The spec's path for the job's driver: relative to the uploaded working dir, or inside
    the project image (the same repository layout under IMAGE_ROOT)."""
    root = working_dir or REPO
    try:
        relative = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        where = f"{root}, the folder uploaded as the job's working dir" if working_dir else \
            f"this repository, which the project image holds at {IMAGE_ROOT}"
        raise SubmitError(f"job spec {path}: outside {where}; put it there (e.g. jobs/)") from None
    return relative if working_dir else f"{IMAGE_ROOT}/{relative}"
