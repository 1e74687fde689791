"""PNG artifacts: sparsity heatmap (masked layer x timestep bucket) and base-vs-masked sample grid."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from maskunet_platform.train.evaluate import EvalResult


def sparsity_heatmap_png(result: EvalResult, out_path: str | Path) -> Path:
    """Drop fraction of each masked layer (rows) in each timestep bucket (columns)."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    if not result.layer_drop:
        raise ValueError("no mask statistics to plot: the eval saw no masked layers")
    layers = list(result.layer_drop)
    grid = np.array([result.layer_drop[name] for name in layers], dtype=float)
    height = max(3.0, 0.22 * len(layers) + 1.5)
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * len(result.buckets), height))
    image = ax.imshow(grid, aspect="auto", cmap="magma", vmin=0.0, vmax=max(grid.max(), 1e-3))
    ax.set_xticks(range(len(result.buckets)), result.buckets, rotation=30, fontsize=7)
    ax.set_yticks(range(len(layers)), [_short(name) for name in layers], fontsize=6)
    ax.set_xlabel("timestep bucket")
    ax.set_title(f"masked weight fraction dropped (held-out, {result.rows} rows)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _short(layer: str) -> str:
    return layer.replace("up_blocks.", "up").replace(".attentions.", ".a").replace(".transformer_blocks.", ".tb")


@torch.no_grad()
def sample_grid_png(base_location: str, generator_dir: str | Path, prompts: list[str], out_path: str | Path,
                    steps: int, guidance_scale: float, seed: int, resolution: int | None = None,
                    device: str = "cpu", dtype: torch.dtype = torch.float32) -> Path:
    """One row per prompt: base image | masked image, same prompt and seed for both."""
    from maskunet import MaskUNetPipeline

    # The base in the training precision; the mask generator stays fp32 (from_base loads it so).
    pipe = MaskUNetPipeline.from_base(base_location, masks=str(generator_dir), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i, prompt in enumerate(prompts):
        pair = []
        for enabled in (False, True):
            pipe.masks_enabled = enabled
            gen = torch.Generator(device).manual_seed(seed + i)
            out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
                       height=resolution, width=resolution)
            pair.append(out.images[0])
        rows.append(pair)
    grid = _compose(rows, prompts)
    out_path = Path(out_path)
    grid.save(out_path)
    return out_path


def _compose(rows: list[list[Image.Image]], prompts: list[str]) -> Image.Image:
    side = max(128, rows[0][0].width)
    label_h, caption_w = 16, 220
    canvas = Image.new("RGB", (caption_w + 2 * side, label_h + side * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((caption_w + 4, 2), "base", fill="black")
    draw.text((caption_w + side + 4, 2), "masked", fill="black")
    for r, (pair, prompt) in enumerate(zip(rows, prompts)):
        top = label_h + r * side
        draw.text((4, top + 4), prompt[:36], fill="black")
        for c, image in enumerate(pair):
            canvas.paste(image.resize((side, side)), (caption_w + c * side, top))
    return canvas
