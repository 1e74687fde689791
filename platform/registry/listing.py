"""`maskunet registry list / show`: registered models, their versions, aliases, key metrics,
source runs, and when and by whom each alias was set (the alias history tag)."""
from datetime import datetime, timezone

from maskunet_platform.registry.aliases import alias_map, read_history
from maskunet_platform.registry.evidence import SHAPES_SCORE, read_evidence

KEY_METRICS = ("eval/base_loss_overall", "eval/masked_loss_overall", SHAPES_SCORE)


def _when(ms) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds") if ms else ""


def list_models(client) -> list[dict]:
    out = []
    for model in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name='{model.name}'")
        out.append({"name": model.name, "versions": len(versions),
                    "latest_version": max((int(v.version) for v in versions), default=None),
                    "aliases": alias_map(model), "updated": _when(model.last_updated_timestamp)})
    return sorted(out, key=lambda m: m["name"])


def version_row(version, aliases: dict[str, str]) -> dict:
    metrics = {}
    for kind in ("heldout", "shapes"):
        evidence = read_evidence(version.tags, kind)
        if evidence is not None:
            metrics.update({k: evidence.metrics[k] for k in KEY_METRICS if k in evidence.metrics})
    return {"version": str(version.version), "aliases": sorted(a for a, v in aliases.items() if v == str(version.version)),
            "created": _when(version.creation_timestamp), "source_run": version.tags.get("run_id") or version.run_id,
            "base_model": version.tags.get("base_model"), "data_source": version.tags.get("data_source"),
            "metrics": metrics}


def show_model(client, name: str) -> dict:
    from mlflow.exceptions import MlflowException

    from maskunet_platform.registry.files import ModelUriError

    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        raise ModelUriError(f"registered model {name!r}: {str(e).splitlines()[0]}") from None
    aliases = alias_map(model)
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), reverse=True)
    history = read_history(client, name)
    set_by = {}
    for entry in history:  # the latest move of each alias
        if aliases.get(entry["alias"]) == entry["version"]:
            set_by[entry["alias"]] = {"at": entry["at"], "by": entry["by"], "action": entry["action"]}
    return {"name": name, "aliases": {a: {"version": v, **set_by.get(a, {})} for a, v in aliases.items()},
            "versions": [version_row(v, aliases) for v in versions], "history": history}
