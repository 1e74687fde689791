"""Fail fast on a base pipeline that cannot be loaded, before Ray, workers or an MLflow run.

Reads only the small config files of the pipeline (a local folder, an s3:// prefix or a Hub
id at `model.revision`), so a typo in the id, a revision that does not exist, a missing
subfolder or an unreachable Hub is one clear error naming `model.base` in seconds, not a
failure of every worker after the cluster has started.
"""
import json
from pathlib import Path

from maskunet_platform.config.model import ModelSection

# What training, evaluation and sampling load from the base (see train/base.py).
REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                  "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json")


class BaseModelError(ValueError):
    """model.base cannot be loaded; the message names the field and the reason."""


def check_base(model: ModelSection) -> None:
    """Raise BaseModelError unless every config file the platform loads is readable."""
    base = model.base
    if base.startswith("s3://"):
        missing = _missing_on_s3(base)
    elif Path(base).expanduser().exists() or base.startswith(("~", "/", ".")):
        folder = Path(base).expanduser()
        if model.create_tiny_if_missing and not (folder / "model_index.json").exists():
            return  # resolve_base builds the tiny offline base there
        if not folder.exists():
            raise BaseModelError(f"model.base {base!r}: the folder does not exist")
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    else:
        missing = _missing_on_hub(base, model.revision)
    if missing:
        raise BaseModelError(f"model.base {base!r} is not a Stable Diffusion pipeline: missing {', '.join(missing)}")


def _missing_on_s3(uri: str) -> list[str]:
    from maskunet_platform.train.base import s3fs_filesystem

    fs = s3fs_filesystem()
    try:
        return [f for f in REQUIRED_FILES if not fs.exists(f"{uri.rstrip('/')}/{f}")]
    except Exception as e:  # noqa: BLE001 - credentials, endpoint, permissions: all one message
        raise BaseModelError(f"model.base {uri!r} cannot be read: {type(e).__name__}: {e}") from None


def _missing_on_hub(repo_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    where = f"model.base {repo_id!r}" + (f" at model.revision {revision!r}" if revision else "")
    missing = []
    for name in REQUIRED_FILES:
        try:
            path = hf_hub_download(repo_id, name, revision=revision)
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
            raise BaseModelError(f"{where} cannot be loaded: the Hugging Face Hub is unreachable and the "
                                 "files are not in the local cache (set HF_HOME to a cache that has them, "
                                 "or use a local folder or s3:// copy)") from None
        except EntryNotFoundError:
            missing.append(name)
            continue
        except (HfHubHTTPError, ValueError, OSError) as e:  # unknown repo or revision, gated, 5xx
            reason = str(e).splitlines()[0]
            raise BaseModelError(f"{where} cannot be loaded: {type(e).__name__}: {reason}") from None
        if name == "model_index.json":
            json.loads(Path(path).read_text())  # a corrupt index fails here, not in every worker
    return missing


def check_weights(weights: str, base: str, flag: str = "--weights") -> Path:
    """The weights folder `weights` names (its own folder or a run's export folder) after
    checking it fits `base` when that is a local folder: BaseModelError (exit 2) naming `flag`
    and the mismatch. Reads file headers only; nothing is loaded."""
    from maskunet.baselines import check_fits_base, find_weights

    try:
        kind, folder = find_weights(weights)
        check_fits_base(kind, folder, Path(base).expanduser() / "unet")
    except ValueError as e:
        raise BaseModelError(f"{flag} {weights}: {e}") from None
    return folder
