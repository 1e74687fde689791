"""Log a mask generator as an MLflow model *from code* and register it as a new version.

The base travels inside the model when it is a small local folder (the tiny base);
otherwise (SD1.5) the model records where to load it from (hub id / path / s3://).
Artifact names (`masks`, `base`, `settings`) are what `registry.files` reads back.
"""
import json
import warnings
from pathlib import Path

import maskunet

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT_PATH = "maskunet_pipeline"
EMBED_BASE_LIMIT = 200 * 2**20  # bytes: embed the tiny base, reference anything bigger
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


def signature():
    """Prompts (and optional seeds) in, base64 PNGs out; sampling settings as params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "image_png_b64")]),
        params=ParamSchema([ParamSpec("num_inference_steps", "long", None), ParamSpec("guidance_scale", "double", None),
                            ParamSpec("masks", "boolean", True)]))


def version_tags(job, run_id: str, run_name: str, post) -> dict[str, str]:
    """Where a version came from and what it was scored on (post: PostTrainingResult)."""
    from maskunet_platform.registry.evidence import evidence_tags, heldout_evidence, shapes_evidence

    source = {"run_id": run_id, "data_source": job.data.source, "base_model": job.model.base,
              "ray_run_name": run_name, "mask_config": json.dumps(job.mask.model_dump(mode="json"), sort_keys=True),
              "method": job.train.method}
    shapes = shapes_evidence(post.shapes) if post.shapes is not None else None
    split = "all" if job.data.subject is not None else "holdout"  # a subject job holds nothing out
    return {**source, **evidence_tags(heldout_evidence(post.eval, job, split), shapes)}


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def log_and_register(run_id: str, tracking_uri: str, model_name: str, base_location: str,
                     generator_dir: str | Path, tags: dict[str, str], defaults: dict, work_dir: Path):
    """Log the model under the run and register a new version of `model_name`; returns it.
    `generator_dir`: trained weights of any method, or the run's export folder holding them."""
    import mlflow

    from maskunet.baselines import find_weights

    _, generator_dir = find_weights(generator_dir)  # the version holds the weights, not the run's logs

    settings = work_dir / "maskunet_settings.json"
    settings.write_text(json.dumps({"base": base_location, "defaults": defaults}))
    artifacts = {"masks": str(generator_dir), "settings": str(settings)}
    base_path = Path(base_location)
    if base_path.is_dir() and _folder_size(base_path) <= EMBED_BASE_LIMIT:
        artifacts["base"] = str(base_path)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # The signature is explicit; an input example would make MLflow load the model and
        # generate while logging, and `predict` type hints would replace that signature.
        warnings.filterwarnings("ignore", message=".*(type hints|input example).*", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH, python_model=str(MODEL_CODE), artifacts=artifacts,
            code_paths=[str(Path(maskunet.__file__).parent)], pip_requirements=requirements(),
            signature=signature())
        return mlflow.register_model(info.model_uri, model_name, tags=tags)
