"""Driver of `maskunet compare`: train each method (same data, base and budget), evaluate each
with the same paired held-out loss and shapes benchmark, then one table, one grid, one MLflow run."""
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray

from maskunet_platform.compare.table import CompareTable, MethodResult, build_table, format_table
from maskunet_platform.config import ConfigError, JobConfig, apply_overrides

log = logging.getLogger(__name__)


@dataclass
class CompareOutcome:
    table: CompareTable
    results: list[MethodResult]
    grid_path: Path
    out_dir: Path
    mlflow_run_id: Optional[str] = None
    seconds: float = 0.0


def method_job(job: JobConfig, method: str) -> JobConfig:
    """`job` for one compare entry (METHOD[:OBJECTIVE]): train.method (and train.objective) set,
    its compare overrides applied (validated again)."""
    from maskunet_platform.config.compare import parse_entry

    name, objective = parse_entry(method)
    raw = job.model_dump(mode="json")
    raw["name"] = f"{job.name}-{method.replace(':', '-')}"
    raw["tracking"]["register_model"] = False
    chosen = [f"train.method={name}"] + ([f"train.objective={objective}"] if objective else [])
    raw = apply_overrides(raw, [*chosen, *job.compare.overrides.get(method, [])])
    try:
        return JobConfig.model_validate(raw)
    except Exception as e:  # noqa: BLE001 - a pydantic error names the field
        raise ConfigError(f"compare.overrides.{method}: {str(e).splitlines()[-1].strip()}") from None


def run_compare(job: JobConfig, address: Optional[str] = None, progress=None) -> CompareOutcome:
    from maskunet_platform.console.progress import Progress
    from maskunet_platform.train.base import resolve_base
    from maskunet_platform.train.launcher import connect_ray, train_job

    progress = progress or Progress()
    jobs = {m: method_job(job, m) for m in job.compare.methods}  # every override checked before training
    started = time.perf_counter()
    connect_ray(address, job)
    base_location = resolve_base(job.model)
    if job.data.subject is not None:  # every method trains and is reported on the same prepared data
        from maskunet_platform.subject.data import prepare_subject_job

        job = prepare_subject_job(job, base_location, progress)
        jobs = {m: method_job(job, m) for m in job.compare.methods}
    results = []
    what = "subject report" if job.data.subject is not None else "shapes benchmark"
    for method, mjob in jobs.items():
        # finalize=False: the comparison evaluates every method itself, paired across methods.
        outcome = train_job(mjob, address=address, finalize=False, progress=progress, base_checked=True)
        with progress.stage(f"evaluate {method} (paired held-out loss + {what})"):
            results.append(_evaluate(mjob, method, outcome))
        _finish_run(mjob, outcome, results[-1])
    out_dir = Path(job.compare.out_dir).expanduser() / job.name
    with progress.stage("image grid (same prompts and seeds)"):
        grid = _grid(job, base_location, {r.method: r.weights_dir for r in results}, _grid_prompts(job, results))
    table = build_table(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grid.png").write_bytes(grid)
    (out_dir / "table.json").write_text(json.dumps(table.to_json(), indent=2))
    (out_dir / "table.txt").write_text("\n".join(format_table(table)) + "\n")
    outcome = CompareOutcome(table, results, out_dir / "grid.png", out_dir, seconds=time.perf_counter() - started)
    if job.tracking.enabled:
        with progress.stage("MLflow log"):
            outcome.mlflow_run_id = _log(job, outcome)
    return outcome


def _evaluate(job: JobConfig, method: str, outcome) -> MethodResult:
    from maskunet_platform.train.post_training import GeneratorSource, eval_split, run_post_training

    post = run_post_training(job, GeneratorSource.from_folder(outcome.generator_dir), split=eval_split(job),
                             shapes=True)
    m = outcome.metrics
    return MethodResult(method, int(m.get("train/trainable_params", 0)), float(m.get("train/peak_memory_mb", 0.0)),
                        float(m.get("train/images_per_s", 0.0)), post.eval, post.shapes, outcome.generator_dir,
                        outcome.run_name, outcome.mlflow_run_id, post.subject)


def _finish_run(job: JobConfig, outcome, result: MethodResult) -> None:
    """Record the method's run as finished (a rerun of the comparison reuses it) and close its
    MLflow run with its evaluation."""
    from dataclasses import asdict

    from maskunet_platform.train.runs import RunStorage, now

    outcome.eval = result.eval.metrics() | (result.shapes.metrics() if result.shapes else {})
    if outcome.action != "finished":
        RunStorage(job).write_record(outcome.run_name, status="finished", finished_at=now(), result=asdict(outcome))
    if outcome.mlflow_run_id and outcome.action != "finished":
        from mlflow import MlflowClient

        from maskunet_platform.train.tracking import log_metrics, tracking_uri

        client = MlflowClient(tracking_uri(job.tracking))
        log_metrics(client, outcome.mlflow_run_id, outcome.eval, int(outcome.metrics.get("step", 0)))
        client.set_terminated(outcome.mlflow_run_id, "FINISHED")


def _grid_prompts(job: JobConfig, results: list[MethodResult]) -> list[str]:
    """compare.grid_prompts; for a subject job, the subject report's first new-context prompts
    (contexts its images never showed), as in the report's own PNG."""
    from maskunet_platform.subject.report import GRID_PROMPTS

    report = results[0].subject
    if report is None:
        return job.compare.grid_prompts
    return [p.caption for p in report.prompts[:GRID_PROMPTS]]


def _grid(job: JobConfig, base_location: str, weights: dict[str, str], prompts: list[str]) -> bytes:
    from maskunet_platform.compare.grid import method_grid_png
    from maskunet_platform.train.post_training import task_resources

    c = job.compare
    task = ray.remote(method_grid_png).options(**task_resources(job), max_retries=1)
    files = {m: _folder_bytes(Path(d)) for m, d in weights.items()}  # shipped by value: any node can draw
    return ray.get(task.remote(base_location, files, prompts, c.grid_seed, c.grid_steps, c.grid_guidance))


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _log(job: JobConfig, outcome: CompareOutcome) -> str:
    from mlflow import MlflowClient

    from maskunet_platform.train.tracking import command_tracking, log_metrics, start_command_run, tracking_uri

    params = {"methods": ",".join(job.compare.methods), "train.steps": job.train.steps,
              "data.batch_size": job.data.batch_size, "model.base": job.model.base,
              **{f"overrides.{m}": " ".join(o) for m, o in job.compare.overrides.items()}}
    section = command_tracking(job.tracking.experiment, tracking_uri(job.tracking), True)
    target = start_command_run(section, f"{job.name}-compare", "compare", params)
    client = MlflowClient(target.tracking_uri)
    log_metrics(client, target.run_id, outcome.table.metrics(), step=0)
    for name in ("grid.png", "table.json", "table.txt"):
        client.log_artifact(target.run_id, str(outcome.out_dir / name))
    client.set_terminated(target.run_id)
    return target.run_id
