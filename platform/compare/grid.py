"""The comparison's image grid: the same prompts and seeds, base then each method (a Ray task)."""
import io
from pathlib import Path

import torch


def method_grid_png(base_location: str, weights: dict[str, dict[str, bytes]], prompts: list[str], seed: int,
                    steps: int, guidance: float) -> bytes:
    """Rows = prompts, columns = base | each method's tuned model (`weights`: method -> the
    files of its exported folder); seed `seed + row` in every column."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="maskunet-grid-") as tmp:
        folders = {}
        for method, files in weights.items():
            folders[method] = write_folder(files, Path(tmp) / method)
        return _draw(base_location, folders, prompts, seed, steps, guidance)


def write_folder(files: dict[str, bytes], folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return str(folder)


@torch.no_grad()
def _draw(base_location: str, folders: dict[str, str], prompts: list[str], seed: int, steps: int,
          guidance: float) -> bytes:
    from PIL import Image, ImageDraw

    from maskunet import MaskUNetPipeline

    columns: dict[str, list] = {}
    for method, folder in [("base", None), *folders.items()]:
        pipe = MaskUNetPipeline.from_base(base_location, masks=folder)
        pipe.set_progress_bar_config(disable=True)
        columns[method] = [pipe(p, num_inference_steps=steps, guidance_scale=guidance,
                                generator=torch.Generator().manual_seed(seed + i)).images[0]
                           for i, p in enumerate(prompts)]
        del pipe
    side = max(96, columns["base"][0].width)
    label_h, caption_w = 16, 200
    canvas = Image.new("RGB", (caption_w + side * len(columns), label_h + side * len(prompts)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, method in enumerate(columns):
        draw.text((caption_w + c * side + 4, 2), method, fill="black")
    for r, prompt in enumerate(prompts):
        draw.text((4, label_h + r * side + 4), prompt[:32], fill="black")
        for c, images in enumerate(columns.values()):
            canvas.paste(images[r].resize((side, side)), (caption_w + c * side, label_h + r * side))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
