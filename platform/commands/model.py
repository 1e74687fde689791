"""`maskunet init-base` and `maskunet generate`."""
from pathlib import Path

import click

from maskunet_platform.commands.generate_options import parse_sampler_options, prepare, sampler_options, write_report
from maskunet_platform.console.errors import InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary


@click.command("init-base")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="folder to write")
@click.option("--pretrained", is_flag=True, help="install the shipped pretrained shapes base (else random weights)")
@click.option("--seed", default=0, show_default=True, help="seed of the random weights")
@console_command("init-base")
def init_base(session: Session, out_dir: str, pretrained: bool, seed: int) -> None:
    """Write a tiny offline SD-architecture base: the pretrained shapes base, or random weights."""
    from maskunet.tiny import install_shapes_base, save_tiny_base

    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"--out {out_dir}: the folder is not empty; choose a new one")
    if pretrained:
        if out.exists():
            out.rmdir()  # empty (checked above): the install renames a complete copy into place
        with session.progress.stage("install the pretrained shapes base"):
            path = install_shapes_base(out)
    else:
        with session.progress.stage("write the tiny base (random weights)"):
            path = save_tiny_base(out, seed=seed)
    kind = "pretrained shapes base" if pretrained else "tiny base (random weights)"
    session.finish(Summary(f"maskunet init-base: {kind} written to {path}",
                           data={"path": str(path), "pretrained": pretrained}),
                   next_step=f"maskunet generate \"a red circle in the center on a blue background\" --base {path} --out out.png")


@click.command()
@click.argument("prompt")
@click.option("--base", default=None, help="base pipeline: local folder or hub id")
@click.option("--weights", "--masks", "masks", default=None, type=click.Path(exists=True, file_okay=False),
              help="trained weights of any method (masks, LoRA, full): a run's export folder <export_dir>/<run>/ "
              "or the generator/, lora/ or unet/ folder in it; --masks is the same option")
@click.option("--model", "model_uri", default=None, help="registered model (instead of --base/--masks): "
              "models:/NAME@ALIAS or models:/NAME/VERSION")
@click.option("--tracking-uri", default=None, help="MLflow registry for --model (default: $MLFLOW_TRACKING_URI, else local)")
@click.option("--no-masks", is_flag=True, help="run the plain base U-Net even when --weights is given")
@click.option("--seed", default=0, show_default=True)
@click.option("--steps", default=25, show_default=True, type=click.IntRange(min=1), help="denoising steps")
@click.option("--guidance", default=7.5, show_default=True, help="classifier-free guidance scale")
@click.option("--size", default=None, type=int, help="image height and width (default: the model's)")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="PNG to write")
@sampler_options
@console_command("generate")
def generate(session: Session, prompt, base, masks, model_uri, tracking_uri, no_masks, seed, steps, guidance, size,
             out_file, **sampler) -> None:
    """Generate one image for PROMPT with the masked (or plain) U-Net, or training-free (--training-free)."""
    import torch

    from maskunet import MaskUNetPipeline

    choice = parse_sampler_options(steps, **sampler)
    if bool(base) == bool(model_uri) or (model_uri and masks):
        raise InvalidInput("give --base (with optional --weights) or --model")
    if model_uri:
        with session.progress.stage(f"download {model_uri}"):
            base, masks = _registered_files(model_uri, tracking_uri)
    try:
        with session.progress.stage("load the pipeline"):
            pipe = MaskUNetPipeline.from_base(base, masks=masks)
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot load base {base!r} / masks {masks!r}: {e}") from None
    if pipe.tuning is not None:  # masks, or a LoRA / fine-tuned U-Net (train.method lora | full)
        pipe.masks_enabled = not no_masks
    sampler_run = prepare(pipe, choice)
    pipe.set_progress_bar_config(disable=True)  # our own progress below
    denoise = session.progress.steps("denoise", steps)

    def on_step(_pipe, index, _timestep, tensors):
        denoise.update(index + 1)
        return tensors

    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                  generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step)
    output = sampler_run(prompt, **kwargs) if sampler_run else pipe(prompt, **kwargs)
    image = output.images[0]
    denoise.done()
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    image.save(out_file)
    tuned = pipe.tuning_kind or "masks"  # masks, or lora / full (a baseline's export)
    mode = "training-free" if sampler_run else (f"{tuned} on" if pipe.masks_enabled else f"{tuned} off")
    data = {"out": str(out_file), "width": image.width, "height": image.height, "mode": mode,
            "masks": "on" if pipe.masks_enabled else "off", "seed": seed, "steps": steps,
            "scheduler": type(pipe.scheduler).__name__}
    if sampler_run and choice.report_file:
        write_report(choice.report_file, output, choice, prompt=prompt, seed=seed, steps=steps, guidance=guidance)
        data["report"] = choice.report_file
    summary = Summary(f"maskunet generate: wrote {out_file} ({image.width}x{image.height}, {mode})", data=data)
    if sampler_run:
        summary.add("time:", f"{output.seconds:.1f} s ({sum(r.iterations for r in output.steps)} optimisation iterations)")
    if sampler_run and choice.report_file:
        summary.add("report:", choice.report_file)
    session.finish(summary)


def _registered_files(model_uri: str, tracking_uri) -> tuple[str, str]:
    """(base, masks folder) of the version a models:/ URI names now."""
    from maskunet_platform.registry.files import fetch

    files = fetch(model_uri, tracking_uri)  # a bad URI or alias: ModelUriError, exit 2
    return files.base, str(files.masks)
