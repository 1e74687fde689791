"""A registered model version on this machine: which version, its mask generator, its base.

Every consumer (generate, bench, serve, promote) resolves `models:/NAME@ALIAS` or
`models:/NAME/VERSION` here. An alias is resolved to a version number first, so the caller
knows exactly which version it got and can notice when the alias moves.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z][\w-]*))/?$")


class ModelUriError(ValueError):
    """A model URI that is malformed or names no registered version (invalid input)."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    alias: Optional[str] = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" + (f" (@{self.alias})" if self.alias else "")


@dataclass
class RegisteredFiles:
    ref: ModelRef
    root: Path  # the downloaded model folder (MLmodel, code/, artifacts/)
    masks: Path  # mask-generator folder
    base: str  # embedded base folder, else the recorded location (hub id / path / s3://)
    settings: dict  # {"base": recorded location, "defaults": sampling defaults}


def parse_model_uri(uri: str) -> tuple[str, Optional[str], Optional[str]]:
    """(name, version or None, alias or None)."""
    match = MODEL_URI.match(uri.strip())
    if not match:
        raise ModelUriError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["version"], match["alias"]


def resolve(client, uri: str) -> ModelRef:
    """The version a URI names now (an alias is looked up in the registry)."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(uri)
    try:
        if alias:
            return ModelRef(name, str(client.get_model_version_by_alias(name, alias).version), alias)
        return ModelRef(name, str(client.get_model_version(name, version).version))
    except MlflowException as e:
        raise ModelUriError(f"model URI {uri!r}: {str(e).splitlines()[0]}") from None


def download(ref: ModelRef, tracking_uri: str, dst: Optional[str | Path] = None) -> RegisteredFiles:
    """Download one version's model folder and locate its artifacts (from its MLmodel file)."""
    import mlflow
    import yaml

    from mlflow import MlflowClient

    # The version's storage location, from this registry: a models:/ URI would be resolved
    # through the process-wide registry URI instead (a default local store unless set).
    location = MlflowClient(tracking_uri).get_model_version_download_uri(ref.name, ref.version)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=tracking_uri,
                                                    dst_path=str(dst) if dst else None))
    flavor = yaml.safe_load((root / "MLmodel").read_text()).get("flavors", {}).get("python_function", {})
    paths = {name: root / spec["path"] for name, spec in (flavor.get("artifacts") or {}).items()}
    if "masks" not in paths or "settings" not in paths:
        raise ModelUriError(f"{ref}: not a MaskUNet model (no masks/settings artifacts in its MLmodel)")
    settings = json.loads(paths["settings"].read_text())
    base = str(paths["base"]) if "base" in paths else settings["base"]
    return RegisteredFiles(ref, root, paths["masks"], base, settings)


def fetch(model_uri: str, tracking_uri_option: Optional[str] = None) -> RegisteredFiles:
    """What `--model URI [--tracking-uri ...]` names, downloaded (tracking URI as every command
    resolves it: the option, else $MLFLOW_TRACKING_URI, else the embedded local store)."""
    from mlflow import MlflowClient

    from maskunet_platform.train.tracking import command_tracking, tracking_uri

    uri = tracking_uri(command_tracking("maskunet", tracking_uri_option, True))
    try:
        return download(resolve(MlflowClient(uri), model_uri), uri)
    except ModelUriError as e:
        raise ModelUriError(f"--model: {e}") from None
