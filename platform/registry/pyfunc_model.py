"""The registered MaskUNet model, logged *from code*: MLflow copies this file into the model
and loading the model runs it (`set_model` below), so no pickled object is ever loaded.

It imports only `maskunet` (shipped with the model as code) and the model's pinned
requirements, never the platform package: a registered model loads wherever those install.
Input: a DataFrame with `prompt` (and optional `seed`). Output: `image_png_b64` per row.
"""
import base64
import io
import json
from pathlib import Path
from typing import Optional

import mlflow
from mlflow.pyfunc import PythonModel


class MaskUNetModel(PythonModel):
    def load_context(self, context) -> None:
        from maskunet import MaskUNetPipeline

        self.settings = json.loads(Path(context.artifacts["settings"]).read_text())
        base = context.artifacts.get("base") or self.settings["base"]
        self.pipe = MaskUNetPipeline.from_base(base, masks=context.artifacts["masks"])
        self.pipe.set_progress_bar_config(disable=True)

    def predict(self, context, model_input, params: Optional[dict] = None):
        import pandas as pd
        import torch

        params = {**self.settings.get("defaults", {}), **{k: v for k, v in (params or {}).items() if v is not None}}
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame:
            raise ValueError("model input needs a `prompt` column")
        self.pipe.masks_enabled = bool(params.get("masks", True))
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


mlflow.models.set_model(MaskUNetModel())
