"""`maskunet bench shapes`: the offline quality benchmark on held-out shapes prompts."""
from pathlib import Path
from typing import Optional

import click

from maskunet_platform.commands.generate_options import parse_sampler_options, prepare
from maskunet_platform.console.errors import InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary


@click.group()
def bench() -> None:
    """Benchmarks of models made with the platform."""


@bench.command("shapes")
@click.option("--base", required=True, help="base pipeline folder (e.g. the pretrained shapes base)")
@click.option("--weights", "--masks", "masks", default=None, type=click.Path(exists=True, file_okay=False),
              help="trained weights of any method (masks, LoRA, full): a run's export folder <export_dir>/<run>/ "
              "or the generator/, lora/ or unet/ folder in it; --masks is the same option")
@click.option("--model", "model_uri", default=None, help="registered model, e.g. models:/NAME@ALIAS (its masks)")
@click.option("--prompts", default=100, show_default=True, type=click.IntRange(1, 700), help="held-out prompts")
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(min=1), help="seeds per prompt")
@click.option("--steps", default=25, show_default=True, type=click.IntRange(min=1), help="denoising steps")
@click.option("--guidance", default=7.5, show_default=True, help="classifier-free guidance scale")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--compare", is_flag=True, help="also score the base with masks off on the same prompts and seeds")
@click.option("--training-free", is_flag=True, help="score training-free sampling (DPM-Solver++ 2M; with --compare, "
              "paired with plain sampling by the same scheduler)")
@click.option("--reward", "rewards", multiple=True, metavar="NAME[=PATH][:WEIGHT]", help="training-free reward (default: shapes)")
@click.option("--tf-schedule", default=None, metavar="SPEC", help="training-free iterations per step (default: reference)")
@click.option("--tf-lr", type=float, default=1e-2, show_default=True, help="training-free AdamW learning rate")
@click.option("--tf-keep", type=float, default=0.934, show_default=True, help="training-free initial keep probability")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="write grid.png + report.json")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else local)")
@click.option("--no-tracking", is_flag=True, help="do not log to MLflow")
@console_command("bench shapes")
def shapes(session: Session, base, masks, model_uri, prompts, seeds, steps, guidance, batch_size, compare,
           training_free, rewards, tf_schedule, tf_lr, tf_keep, out_dir, tracking_uri, no_tracking) -> None:
    """Score generated images on held-out shapes prompts: colour, kind, position, binding, KID."""
    from maskunet_platform.bench.shapes.benchmark import ShapesBenchSettings, format_table, run_shapes_benchmark

    if masks and model_uri:
        raise InvalidInput("--weights and --model: give one of them")
    if training_free and (masks or model_uri):
        raise InvalidInput("--training-free runs on the base U-Net: drop --weights / --model")
    if compare and not (masks or model_uri or training_free):
        raise InvalidInput("--compare needs --weights, --model (tuned vs. base) or --training-free")
    choice = parse_sampler_options(steps, None, training_free, rewards, None, tf_schedule, tf_lr, tf_keep, None)
    settings = ShapesBenchSettings(prompts=prompts, seeds=seeds, steps=steps, guidance=guidance,
                                   batch_size=batch_size)
    if model_uri:
        with session.progress.stage(f"download the masks of {model_uri}"):
            masks = _download_model_masks(model_uri, tracking_uri)
    pipe = _load(session, base, masks)
    sampler = prepare(pipe, choice)  # None unless --training-free
    stages: dict = {}

    def on_progress(model: str, done: int, total: int) -> None:
        if model not in stages:
            stages[model] = session.progress.steps(f"generate ({model})", total, unit="image")
        stages[model].update(done)
        if done >= total:
            stages[model].done()

    report = run_shapes_benchmark(pipe, settings, compare, on_progress, training_free=sampler)
    tf_params = {} if sampler is None else {
        "training_free.schedule": str(choice.training_free.schedule), "training_free.lr": tf_lr,
        "training_free.keep": tf_keep, "training_free.rewards": ",".join(choice.rewards)}
    run_id = None if no_tracking else _log(report, base, masks or model_uri, tracking_uri, tf_params)
    if out_dir:
        _write(report, Path(out_dir))
    summary = Summary(f"maskunet bench shapes: {report.items} images per model "
                      f"({prompts} held-out prompts x {seeds} seeds, {steps} steps)",
                      data={**report.to_json(), "mlflow_run_id": run_id, "out": out_dir})
    for row in format_table(report.metrics()):
        summary.add("", row)
    if out_dir:
        summary.add("grid:", str(Path(out_dir) / "grid.png"))
    if run_id:
        summary.add("mlflow run:", run_id)
    session.finish(summary)


def _load(session: Session, base: str, masks: Optional[str]):
    from maskunet import MaskUNetPipeline

    try:
        with session.progress.stage("load the pipeline"):
            pipe = MaskUNetPipeline.from_base(base, masks=masks)
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot load base {base!r} / masks {masks!r}: {e}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _download_model_masks(model_uri: str, tracking_uri: Optional[str]) -> str:
    """The mask-generator folder of a registered MaskUNet model version."""
    from maskunet_platform.registry.files import fetch

    return str(fetch(model_uri, tracking_uri).masks)  # a bad URI or alias: ModelUriError, exit 2


def _log(report, base: str, masks: Optional[str], tracking_uri: Optional[str], extra_params: dict) -> str:
    from mlflow import MlflowClient

    from maskunet_platform.train.tracking import command_tracking, log_metrics, start_command_run

    params = {**{f"bench.{k}": v for k, v in vars(report.settings).items()}, "base": base, "masks": masks or "",
              **extra_params}
    target = start_command_run(command_tracking("maskunet-bench", tracking_uri, True), "bench-shapes", "bench-shapes",
                               params)
    client = MlflowClient(target.tracking_uri)
    log_metrics(client, target.run_id, report.metrics(), step=0)
    client.log_image(target.run_id, _png(report.grid_png), "shapes_grid.png")
    client.log_dict(target.run_id, report.to_json(), "shapes_report.json")
    client.set_terminated(target.run_id)
    return target.run_id


def _png(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def _write(report, out: Path) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.png").write_bytes(report.grid_png)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2))
