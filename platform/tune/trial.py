"""One sweep trial: a Tune function trainable (the "driver") that runs a whole Ray Train run.

Train V2: the trial builds and fits its own TorchTrainer; Train's Tune report callback turns
each `ray.train.report` of world rank 0 (train metrics + the quick held-out score every rank
computes) into one Tune iteration, which ASHA may stop. A trial that finishes is scored by
the full paired evaluation (a post-training Ray task) and reports that as its last result.
Each trial logs to its own MLflow child run of the sweep's parent run.
"""
from dataclasses import asdict, dataclass
from typing import Any, Optional

import ray

from maskunet_platform.config import JobConfig
from maskunet_platform.tune.space import trial_job

FINAL_FLAG = "final"  # set on the last result of a trial that trained to the end
CHECKPOINT_TAG = "maskunet.checkpoint"  # the final Train checkpoint of a completed trial


@dataclass
class SweepSetup:
    """What every trial shares, shipped once through the object store (tune.with_parameters)."""

    job: dict  # the sweep's base job (JSON)
    sweep: str
    base_location: str
    quick_batch: dict  # fixed held-out rows (tensors)
    parent_run_id: Optional[str]  # the sweep's MLflow run (None: tracking off)


def trial_run_name(sweep: str, trial_id: str) -> str:
    """Deterministic: a retried or resumed trial continues its own Train run."""
    return f"{sweep}-{trial_id}"


def run_trial(config: dict[str, Any], setup: SweepSetup) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from maskunet_platform.train.launcher import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    run_name = trial_run_name(setup.sweep, trial_id)
    job = trial_job(JobConfig.model_validate(setup.job), config)
    job = job.model_copy(update={"train": job.train.model_copy(update={"run_name": run_name})})
    target = _child_run(setup, job, trial_id, config)
    trainer = build_trainer(job, run_name, asdict(target) if target else None, setup.base_location,
                            quick_eval=setup.quick_batch, callbacks=(TuneReportCallback(),))
    result = trainer.fit()
    if result.error is not None:
        _end_child(target, "FAILED", "errored")
        raise RuntimeError(f"trial {trial_id} failed: {result.error}") from result.error
    final = {**(result.metrics or {}), **_full_eval(job, result.checkpoint, target), FINAL_FLAG: 1}
    _end_child(target, "FINISHED", "completed")
    ray.tune.report(final)


def _full_eval(job: JobConfig, checkpoint, target) -> dict[str, float]:
    """The full paired held-out evaluation of the trained generator (a Ray task), logged with
    its registry evidence, so the best trial can be registered (and promoted) later."""
    from maskunet_platform.train.post_training import GeneratorSource, eval_split, run_post_training

    post = run_post_training(job, GeneratorSource(checkpoint=checkpoint), split=eval_split(job))
    metrics = post.eval.metrics() | (post.subject.metrics() if post.subject else {})
    if target is not None:
        from mlflow import MlflowClient

        from maskunet_platform.registry.evidence import heldout_evidence
        from maskunet_platform.train.tracking import log_metrics

        client = MlflowClient(target.tracking_uri)
        log_metrics(client, target.run_id, metrics, job.train.steps)
        evidence = heldout_evidence(post.eval, job, eval_split(job))
        client.set_tag(target.run_id, evidence.tag, evidence.to_tag_value())
        client.set_tag(target.run_id, CHECKPOINT_TAG, checkpoint.path)
    return metrics


def _child_run(setup: SweepSetup, job: JobConfig, trial_id: str, config: dict):
    """This trial's MLflow run under the sweep's parent (the same run when the trial restarts)."""
    if setup.parent_run_id is None:
        return None
    from mlflow import MlflowClient

    from maskunet_platform.train.tracking import start_or_resume_run

    target = start_or_resume_run(job, trial_run_name(setup.sweep, trial_id))
    client = MlflowClient(target.tracking_uri)
    for key, value in {"mlflow.parentRunId": setup.parent_run_id, "maskunet.sweep": setup.sweep,
                       "maskunet.trial_id": trial_id, "maskunet.kind": "sweep-trial",
                       "maskunet.trial_status": "running", **{f"trial.{k}": str(v) for k, v in config.items()}}.items():
        client.set_tag(target.run_id, key, value)
    return target


def _end_child(target, status: str, how: str) -> None:
    if target is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient(target.tracking_uri)
    client.set_tag(target.run_id, "maskunet.trial_status", how)
    client.set_terminated(target.run_id, status)
