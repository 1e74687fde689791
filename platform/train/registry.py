"""MLflow registry: a pyfunc that loads base + mask generator and generates images.

The base travels inside the model when it is a small local folder (the tiny base);
otherwise (SD1.5) the model records where to load it from (hub id / path / s3://).
"""
import base64
import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import mlflow.pyfunc

import maskunet

EMBED_BASE_LIMIT = 200 * 2**20  # bytes: embed the tiny base, reference anything bigger


class MaskUNetPyfunc(mlflow.pyfunc.PythonModel):
    """Input: DataFrame with `prompt` (and optional `seed`). Output: `image_png_b64` per row."""

    def load_context(self, context) -> None:
        from maskunet import MaskUNetPipeline

        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        base = context.artifacts.get("base") or settings["base"]
        self.settings = settings
        self.pipe = MaskUNetPipeline.from_base(base, masks=context.artifacts["masks"])
        self.pipe.set_progress_bar_config(disable=True)

    def predict(self, context, model_input, params: Optional[dict] = None):
        import pandas as pd
        import torch

        params = {**self.settings.get("defaults", {}), **(params or {})}
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame:
            raise ValueError("model input needs a `prompt` column")
        images = []
        for i, row in frame.reset_index(drop=True).iterrows():
            seed = int(row["seed"]) if "seed" in frame and pd.notna(row["seed"]) else i
            out = self.pipe(str(row["prompt"]), num_inference_steps=int(params["num_inference_steps"]),
                            guidance_scale=float(params["guidance_scale"]),
                            generator=torch.Generator("cpu").manual_seed(seed))
            buf = io.BytesIO()
            out.images[0].save(buf, format="PNG")
            images.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        return pd.DataFrame({"prompt": frame["prompt"].astype(str).tolist(), "image_png_b64": images})


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def log_and_register(run_id: str, tracking_uri: str, model_name: str, base_location: str,
                     generator_dir: str | Path, tags: dict[str, str], defaults: dict, work_dir: Path):
    """Log the pyfunc under the run and register a new version of `model_name`; returns it."""
    import mlflow
    settings = work_dir / "maskunet_settings.json"
    settings.write_text(json.dumps({"base": base_location, "defaults": defaults}))
    artifacts = {"masks": str(generator_dir), "settings": str(settings)}
    base_path = Path(base_location)
    if base_path.is_dir() and _folder_size(base_path) <= EMBED_BASE_LIMIT:
        artifacts["base"] = str(base_path)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id), _pickled_by_value(sys.modules[__name__]):
        info = mlflow.pyfunc.log_model(
            name="maskunet_pipeline", python_model=MaskUNetPyfunc(), artifacts=artifacts,
            code_paths=[str(Path(maskunet.__file__).parent)], pip_requirements=requirements(),
            input_example=None)
        return mlflow.register_model(info.model_uri, model_name, tags=tags)


# What the model imports when it loads and predicts (maskunet's own dependencies and the
# pyfunc's); maskunet itself ships with the model as code.
MODEL_REQUIREMENTS = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub",
                      "numpy", "pillow", "pandas", "mlflow")


def requirements() -> list[str]:
    """Pins of the installed versions without local labels (`2.13.0+cpu` -> `2.13.0`), so the
    model installs on a GPU machine (PyPI's default torch wheel there is the CUDA build)."""
    from importlib.metadata import version

    from packaging.version import Version

    return [f"{pkg}=={Version(version(pkg)).public}" for pkg in MODEL_REQUIREMENTS]


@contextmanager
def _pickled_by_value(module):
    """Pickle this module's pyfunc class by value: the model then needs `maskunet` (shipped as
    code) but not this platform package where it is loaded."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)
