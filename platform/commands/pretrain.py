"""`maskunet pretrain-base`: train the tiny shapes base from scratch (VAE, then U-Net)."""
from pathlib import Path
from typing import Optional

import click

from maskunet_platform.console.errors import InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary


@click.command("pretrain-base")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="folder to write")
@click.option("--recipe", default="auto", show_default=True, type=click.Choice(["auto", "gpu", "cpu"]),
              help="stage sizes: gpu = the shipped base's (one GPU, ~10 min), cpu = ~50 min on 2 cores; "
                   "auto = gpu when the cluster has a GPU")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="U-Net steps (recipe: 2800 gpu, 2000 cpu)")
@click.option("--vae-steps", default=None, type=click.IntRange(min=1), help="VAE steps (recipe: 2500 / 2000)")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="U-Net images per step (recipe: 384 / 32)")
@click.option("--vae-batch-size", default=None, type=click.IntRange(min=1), help="VAE crops per step (recipe: 64 / 16)")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="U-Net peak learning rate (recipe: 6e-4 / 3e-4)")
@click.option("--resolution", default=64, show_default=True, type=int, help="image side in px (multiple of 8)")
@click.option("--seed", default=0, show_default=True, help="seed of weights, data and noise")
@click.option("--vae", "vae_from", default=None, type=click.Path(exists=True, file_okay=False),
              help="reuse the trained VAE of this pipeline folder (skips the VAE stage)")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address; default: local Ray.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else local)")
@click.option("--no-tracking", is_flag=True, help="do not log to MLflow")
@console_command("pretrain-base")
def pretrain_base(session: Session, out_dir, recipe, steps, vae_steps, batch_size, vae_batch_size, lr, resolution,
                  seed, vae_from, address, tracking_uri, no_tracking) -> None:
    """Pretrain the tiny shapes base (what `init-base --pretrained` installs), seeded, on Ray."""
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"--out {out_dir}: the folder is not empty; choose a new one")
    if resolution % 8 or not 32 <= resolution <= 256:
        raise InvalidInput(f"--resolution {resolution}: must be a multiple of 8 between 32 and 256")
    given = {"unet_steps": steps, "vae_steps": vae_steps, "unet_batch_size": batch_size,
             "vae_batch_size": vae_batch_size, "unet_lr": lr, "resolution": resolution, "seed": seed}
    job = _tracking_job(tracking_uri, not no_tracking)
    vae_files = _vae_files(vae_from) if vae_from else None
    settings, result = _run(session, recipe, given, out, job, address, vae_files)
    summary = Summary(f"maskunet pretrain-base: shapes base written to {out}", data=result)
    vae = f"VAE from {vae_from}" if vae_from else f"VAE {settings.vae_steps} x {settings.vae_batch_size}"
    summary.add("steps:", f"{vae}, U-Net {settings.unet_steps} x {settings.unet_batch_size} images at {resolution} px "
                          f"(lr {settings.unet_lr:g}, {result['recipe']} recipe), seed {seed}")
    summary.add("size:", f"{result['bytes'] / 2**20:.1f} MiB")
    if result["mlflow_run_id"]:
        summary.add("mlflow run:", f"{result['mlflow_run_id']} ({result['tracking_uri']})")
    session.finish(summary, next_step=f"maskunet bench shapes --base {out}")


def _tracking_job(tracking_uri: Optional[str], enabled: bool):
    from maskunet_platform.config import JobConfig

    return JobConfig.model_validate({"name": "pretrain-base", "tracking": {
        "enabled": enabled, "tracking_uri": tracking_uri, "experiment": "maskunet-pretrain"}})


def _vae_files(folder: str) -> dict:
    from maskunet_platform.pretrain.runner import vae_folder_files

    try:
        return vae_folder_files(Path(folder))
    except FileNotFoundError as e:
        raise InvalidInput(f"--vae {folder}: {e}") from None


def _run(session: Session, recipe: str, given: dict, out: Path, job, address: Optional[str], vae_files):
    from maskunet_platform.config import ConfigError
    from maskunet_platform.pretrain.runner import PretrainSettings, cluster_has_gpu
    from maskunet_platform.pretrain.runner import pretrain_base as run_pretraining
    from maskunet_platform.train.launcher import connect_ray

    try:
        with session.progress.stage("connect to Ray"):
            connect_ray(address, job)
    except ConfigError as e:
        raise InvalidInput(str(e)) from None
    if recipe == "auto":
        recipe = "gpu" if cluster_has_gpu() else "cpu"
    settings = PretrainSettings.from_recipe(recipe, **given)
    result = run_pretraining(settings, out, job.tracking, session.progress, vae_files)
    return settings, {**result, "recipe": recipe}
