"""Kubernetes OpenAPI schemas made strict: unknown keys become errors.

A CRD schema lists an object's `properties` but (like the API server, which prunes unknown
fields silently) never forbids others, so `imagePullPolcy:` would pass. Every object schema
that lists properties, allows no additional ones and does not preserve unknown fields gets
`additionalProperties: false`; then plain JSON-schema validation reports misspellings."""
import copy
import json
from pathlib import Path

import jsonschema

KUBERAY = Path(__file__).parent / "kuberay"
SCHEMAS = {"RayCluster": "rayclusters.json", "RayJob": "rayjobs.json", "RayService": "rayservices.json"}
METADATA_KEYS = {"name", "namespace", "labels", "annotations"}


def strict(schema):
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) if key != "properties" else {k: strict(v) for k, v in value.items()}
           for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def kuberay_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = strict(json.loads((KUBERAY / SCHEMAS[kind]).read_text()))
    return jsonschema.Draft7Validator(schema)


def plain_validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((KUBERAY / SCHEMAS[kind]).read_text()))


def errors(manifest: dict) -> list[str]:
    """Every schema violation of a KubeRay manifest, as `path: message`."""
    found = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
             for e in kuberay_validator(manifest["kind"]).iter_errors(copy.deepcopy(manifest))]
    if manifest.get("apiVersion") != "ray.io/v1":
        found.append(f"apiVersion: {manifest.get('apiVersion')!r} is not ray.io/v1")
    unknown = set(manifest.get("metadata") or {}) - METADATA_KEYS
    found += [f"metadata.{key}: not a metadata field used here" for key in sorted(unknown)]
    return found
