"""`pretrain_base`: both stages as one Ray task (a GPU when the cluster has one), tracked in MLflow.

The task returns the saved pipeline folder's files (about 19 MB), so the driver writes them
wherever `--out` points even when the task ran on another machine of the cluster.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


# Stage sizes of the two recipes. `gpu` made the shipped base (maskunet/assets/shapes-base:
# ~9.5 min on one H200); `cpu` fits ~50 min on 2 cores and gives a base that draws the
# background but few shapes (README, "The shapes world").
RECIPES = {
    "cpu": {"vae_steps": 2000, "vae_batch_size": 16, "unet_steps": 2000, "unet_batch_size": 32, "unet_lr": 3e-4},
    "gpu": {"vae_steps": 2500, "vae_batch_size": 64, "unet_steps": 2800, "unet_batch_size": 384, "unet_lr": 6e-4},
}


def cluster_has_gpu() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


@dataclass(frozen=True)
class PretrainSettings:
    resolution: int = 64
    vae_steps: int = 2000
    unet_steps: int = 2000
    vae_batch_size: int = 16
    unet_batch_size: int = 32
    vae_lr: float = 2e-4  # 1e-3 learns ~3x slower (measured)
    unet_lr: float = 3e-4
    seed: int = 0
    data_workers: Optional[int] = None  # processes drawing rows; None: 0 on CPU, up to 12 beside a GPU

    @classmethod
    def from_recipe(cls, recipe: str, **given) -> "PretrainSettings":
        """The recipe's stage sizes; `given` (explicit flags, None = not given) wins."""
        return cls(**{**RECIPES[recipe], **{k: v for k, v in given.items() if v is not None}})

    def stage(self, name: str):
        from maskunet_platform.pretrain.stages import StageSettings

        steps, batch, lr = ((self.vae_steps, self.vae_batch_size, self.vae_lr) if name == "vae"
                            else (self.unet_steps, self.unet_batch_size, self.unet_lr))
        # Distinct data streams per stage, none of them the sample dataset's (seed 0 rows).
        return StageSettings(steps=steps, batch_size=batch, lr=lr, seed=1000 * (self.seed + 1) + len(name),
                             resolution=self.resolution, data_workers=self._data_workers())

    def _data_workers(self) -> int:
        import os

        import torch

        if self.data_workers is not None:
            return self.data_workers
        # On CPU the cores are the training's; a GPU steps faster than one core makes rows.
        return min(12, max(1, (os.cpu_count() or 2) - 2)) if torch.cuda.is_available() else 0


def pretrain_files(settings: PretrainSettings, target: Optional[dict], board,
                   vae_files: Optional[dict[str, bytes]] = None) -> dict[str, bytes]:
    """Train the VAE (or take the trained one in `vae_files`), then the U-Net and text
    encoder; the pipeline folder as {path: bytes}."""
    from maskunet_platform.console.train_progress import BoardClient
    from maskunet_platform.train.tracking import WorkerTracker

    tracker = WorkerTracker(target, enabled=target is not None)
    client = BoardClient(board, enabled=board is not None)
    started = time.monotonic()

    def log(stage: str, metrics: dict, step: int) -> None:
        offset = 0 if stage == "vae" else settings.vae_steps  # one x-axis for both curves
        tracker.log_metrics({**metrics, "elapsed_s": time.monotonic() - started}, offset + step)
        client.stage_step(step, loss=metrics[f"{stage}/loss"])

    try:
        return train_base(settings, log, client.stage, vae_files)
    finally:
        tracker.close()


def train_base(settings: PretrainSettings, log, begin_stage=lambda name, steps: None,
               vae_files: Optional[dict[str, bytes]] = None) -> dict[str, bytes]:
    """Both stages on this process's best device, no Ray or MLflow: `log(stage, metrics, step)`."""
    import torch

    from maskunet.tiny import build_tiny_pipeline
    from maskunet_platform.pretrain.stages import train_unet, train_vae

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="maskunet-pretrain-"))
    try:
        pipe = build_tiny_pipeline(work, seed=settings.seed, shapes=True, resolution=settings.resolution)
        if vae_files:
            pipe.vae = _load_vae(vae_files, work / "given-vae")
        else:
            begin_stage("pretrain VAE", settings.vae_steps)
            train_vae(pipe.vae, settings.stage("vae"), device, lambda m, step: log("vae", m, step))
        begin_stage("pretrain U-Net", settings.unet_steps)
        train_unet(pipe, settings.stage("unet"), device, lambda m, step: log("unet", m, step))
        out = work / "pipeline"
        pipe.to("cpu").save_pretrained(out, safe_serialization=True)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load_vae(files: dict[str, bytes], folder: Path):
    from diffusers import AutoencoderKL

    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return AutoencoderKL.from_pretrained(folder)


def vae_folder_files(base: Path) -> dict[str, bytes]:
    """The `vae/` files of a pipeline folder (safetensors + config), to reuse its VAE."""
    folder = base / "vae"
    files = {p.name: p.read_bytes() for p in folder.glob("*") if p.suffix in (".json", ".safetensors")}
    if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        raise FileNotFoundError(f"{folder} holds no safetensors VAE (config.json + *.safetensors)")
    return files


def task_options() -> dict:
    """One GPU when the cluster has one, else the CPUs of its largest node."""
    import ray

    if cluster_has_gpu():
        return {"num_gpus": 1, "num_cpus": 4}
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    return {"num_cpus": max(1, int(largest))}


def pretrain_base(settings: PretrainSettings, out_dir: Path, tracking, progress,
                  vae_files: Optional[dict[str, bytes]] = None) -> dict:
    """Run the pretraining task, write `out_dir`, log the run; returns a summary dict."""
    import ray

    from maskunet_platform.console.train_progress import ProgressBoard, StageBoardWatcher

    run = _start_run(tracking, settings)
    board = ProgressBoard.remote()
    watcher = StageBoardWatcher(board, progress).start()
    task = ray.remote(pretrain_files).options(**task_options(), max_retries=0)
    ok = False
    try:
        files = ray.get(task.remote(settings, run and run["target"], board, vae_files))
        ok = True
    finally:
        watcher.stop(ok)
        if run and not ok:
            run["client"].set_terminated(run["target"]["run_id"], status="FAILED")
    for rel, data in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if run:
        client, run_id = run["client"], run["target"]["run_id"]
        client.log_artifacts(run_id, str(out_dir), "base")
        client.set_terminated(run_id)
    size = sum(len(b) for b in files.values())
    return {"out": str(out_dir), "bytes": size, "mlflow_run_id": run and run["target"]["run_id"],
            "tracking_uri": run and run["target"]["tracking_uri"],
            "experiment_id": run and run["target"]["experiment_id"]}


def _start_run(tracking, settings: PretrainSettings) -> Optional[dict]:
    if not tracking.enabled:
        return None
    from dataclasses import asdict as fields

    from mlflow import MlflowClient

    from maskunet_platform.train.tracking import start_command_run

    target = start_command_run(tracking, f"pretrain-base-seed{settings.seed}", "pretrain-base", fields(settings))
    return {"client": MlflowClient(target.tracking_uri), "target": vars(target)}
