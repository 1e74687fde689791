"""The sweep's MLflow parent run: the spec in, the summary out (best config, table, plot)."""
import csv
import io

import yaml

from maskunet_platform.config import JobConfig
from maskunet_platform.train.tracking import TrackingTarget, start_or_resume_run
from maskunet_platform.tune.results import COMPLETED, SweepOutcome


def start_parent(job: JobConfig, sweep: str, job_yaml: str) -> TrackingTarget:
    """The sweep's run (the same one when the sweep resumes), with the spec as artifacts."""
    from mlflow import MlflowClient

    target = start_or_resume_run(job, sweep)
    client = MlflowClient(target.tracking_uri)
    client.set_tag(target.run_id, "maskunet.kind", "sweep")
    client.log_text(target.run_id, job_yaml, "sweep.yaml")
    space = {k: v.model_dump(exclude_none=True) for k, v in job.tune.search_space.items()}
    client.log_dict(target.run_id, {"search_space": space, **job.tune.model_dump(exclude={"search_space"})},
                    "search_space.json")
    return target


def finish_parent(job: JobConfig, outcome: SweepOutcome, parent: TrackingTarget) -> None:
    """Close the children Tune stopped, then the summary on the parent run."""
    from mlflow import MlflowClient

    client = MlflowClient(parent.tracking_uri)
    children = client.search_runs([parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    by_trial = {run.data.tags.get("maskunet.trial_id"): run for run in children}
    for trial in outcome.trials:
        run = by_trial.get(trial.trial_id)
        if run is None:
            continue
        trial.run_id = run.info.run_id
        if run.info.status == "RUNNING":  # stopped by ASHA (or the sweep was interrupted)
            client.set_tag(run.info.run_id, "maskunet.trial_status", trial.status)
            client.set_terminated(run.info.run_id, "KILLED" if trial.status != COMPLETED else "FINISHED")
    buffer = io.StringIO()
    csv.writer(buffer).writerows(outcome.table())
    client.log_text(parent.run_id, buffer.getvalue(), "sweep_summary.csv")
    client.log_dict(parent.run_id, outcome.to_json(), "sweep_summary.json")
    best = outcome.best
    if best is not None:
        client.log_text(parent.run_id, yaml.safe_dump(best.config, sort_keys=True), "best_config.yaml")
        client.log_metric(parent.run_id, f"best/{job.tune.metric}", best.metric)
        client.set_tag(parent.run_id, "maskunet.best_trial", best.trial_id)
    client.log_metric(parent.run_id, "sweep/trials_completed",
                      sum(t.status == COMPLETED for t in outcome.trials))
    client.set_terminated(parent.run_id, "FINISHED")
