"""Serving a registry alias that moves: `models:/NAME@ALIAS` is re-resolved (registry.files)
every `serve.reload_interval_s` and on `POST /v1/admin/reload`; a new version is downloaded
and loaded beside the old one, then swapped in (the caller replaces one reference, so a
batch already running finishes on the model it started with and no request fails)."""
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from maskunet_platform.serve.engine import LoadedModel, LoadOptions, ModelSource, load_pipeline


def current_version(source: ModelSource):
    """The ModelRef the URI names now (raises registry.files.ModelUriError)."""
    from mlflow import MlflowClient

    from maskunet_platform.registry.files import resolve

    return resolve(MlflowClient(source.tracking_uri), source.model_uri)


def load_version(ref, source: ModelSource, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Download one registered version into its own folder and load its pipeline."""
    from maskunet_platform.registry.files import download

    folder = Path(tempfile.mkdtemp(prefix=f"maskunet-serve-{ref.name}-v{ref.version}-"))
    try:
        files = download(ref, source.tracking_uri, dst=folder)
        model = load_pipeline(files.base, str(files.masks),
                              registry={"name": ref.name, "version": ref.version, "alias": ref.alias},
                              defaults=files.settings.get("defaults") or {}, options=options)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    model.download_dir = folder
    return model


def load_source(source: ModelSource, options: LoadOptions = LoadOptions()) -> LoadedModel:
    if source.model_uri:
        return load_version(current_version(source), source, options)
    return load_pipeline(source.base, source.masks, options=options)


def newer_model(source: ModelSource, loaded: LoadedModel, options: LoadOptions = LoadOptions()) -> Optional[LoadedModel]:
    """The newly loaded model when the alias names another version than `loaded`, else None."""
    ref = current_version(source)
    if loaded.registry and ref.version == loaded.registry["version"]:
        return None
    return load_version(ref, source, options)


def release(model: LoadedModel) -> None:
    """Delete a replaced version's downloaded files (the pipeline is already in memory)."""
    if model.download_dir:
        shutil.rmtree(model.download_dir, ignore_errors=True)
