"""Score registered versions now, for a promotion gate: the paired held-out loss and/or the
shapes benchmark, each version in one Ray task on its own base and masks, all with the same
settings, so their numbers are comparable. fp32 everywhere: the gate compares numbers, so
they must not depend on where each task ran."""
import tempfile
from pathlib import Path
from typing import Optional

import ray

from maskunet_platform.config import JobConfig
from maskunet_platform.registry.evidence import Evidence, heldout_evidence, shapes_evidence
from maskunet_platform.train.post_training import GeneratorSource


def evaluation_job(template: dict[str, Optional[Evidence]], data_uri: Optional[str]) -> tuple[JobConfig, str]:
    """(job, split) repeating the challenger's logged settings; `data_uri`: that data, all rows."""
    heldout, shapes = template.get("heldout"), template.get("shapes")
    data = dict(heldout.settings["data"]) if heldout else {}
    split = "all" if data_uri else (heldout.settings["split"] if heldout else "holdout")
    if data_uri:
        data["source"] = data_uri
    evaluation = {key: heldout.settings[key] for key in ("rows", "seed", "timestep_buckets", "batch_size")} \
        if heldout else {}
    keys = ("prompts", "seeds", "steps", "guidance", "batch_size")
    evaluation["shapes"] = {key: shapes.settings[key] for key in keys} if shapes else {"prompts": 0}
    job = JobConfig.model_validate({"data": data, "train": {"eval": evaluation, "num_workers": 1},
                                    "tracking": {"enabled": False}, "model": {"create_tiny_if_missing": False}})
    return job, split


def evaluate_versions(tracking_uri: str, versions: list, template: dict[str, Optional[Evidence]],
                      data_uri: Optional[str], address: Optional[str], progress) -> list[dict[str, Evidence]]:
    """Evidence of each kind in `template` for each version (MLflow ModelVersion entities)."""
    from maskunet_platform.registry.files import ModelRef, download
    from maskunet_platform.train.launcher import connect_ray

    job, split = evaluation_job(template, data_uri)
    kinds = sorted(template)
    with progress.stage("start Ray"):
        connect_ray(address, job)
    results = []
    with tempfile.TemporaryDirectory(prefix="maskunet-gate-") as tmp:
        for version in versions:
            with progress.stage(f"evaluate {version.name} v{version.version} ({', '.join(kinds)}, Ray task)"):
                files = download(ModelRef(version.name, str(version.version)), tracking_uri,
                                 Path(tmp) / f"v{version.version}")
                base = _folder_bytes(Path(files.base)) if Path(files.base).is_dir() else files.base
                task = ray.remote(_score).options(**_resources(), max_retries=1)
                results.append(ray.get(task.remote(job.model_dump(mode="json"), GeneratorSource.from_folder(files.masks),
                                                   base, data_uri, split, kinds)))
    return results


def _resources() -> dict:
    return {"num_gpus": 1, "num_cpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    """A base folder shipped by value: the task may run on a node without the driver's disk."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _score(job_data: dict, generator: GeneratorSource, base, data_uri: Optional[str], split: str,
           kinds: list[str]) -> dict[str, Evidence]:
    """The Ray task: materialise what was shipped by value, then score."""
    import torch

    from maskunet_platform.train.base import resolve_base

    job = JobConfig.model_validate(job_data)
    with tempfile.TemporaryDirectory(prefix="maskunet-gate-task-") as tmp:
        if isinstance(base, dict):
            for name, data in base.items():
                (Path(tmp) / "base" / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / "base" / name).write_bytes(data)
            base = str(Path(tmp) / "base")
        job = job.model_copy(update={"model": job.model.model_copy(update={"base": base})})
        generator_dir = generator.materialize(Path(tmp) / "generator")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return score(job, resolve_base(job.model), generator_dir, data_uri, split, kinds, device)


def score(job: JobConfig, base_location: str, generator_dir: Path, data_uri: Optional[str], split: str,
          kinds: list[str], device: str = "cpu") -> dict[str, Evidence]:
    """Evidence of `kinds` for one mask generator on `base_location`, in this process (fp32)."""
    import torch

    from maskunet_platform.train.finalize import run_paired_eval
    from maskunet_platform.train.post_training import shapes_benchmark

    out = {}
    if "heldout" in kinds:
        result = run_paired_eval(job, base_location, str(generator_dir), data_uri, split, device, torch.float32)
        out["heldout"] = heldout_evidence(result, job, split)
    if "shapes" in kinds:
        out["shapes"] = shapes_evidence(shapes_benchmark(job, base_location, generator_dir, device, torch.float32))
    return out
