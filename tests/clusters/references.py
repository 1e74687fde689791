"""What the cluster definitions point at: images infra/ builds, commands of this CLI, job
specs and config files in this repository (at /app in the image)."""
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE_ROOT = "/app"


def built_images() -> set[str]:
    """The tags infra/build-images.sh builds, from infra/images.env."""
    values = {}
    for line in (REPO / "infra" / "images.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return {f"{values['IMAGE_REPO']}:{values['IMAGE_VERSION']}-{variant}" for variant in ("cuda", "cpu")}


def pod_templates(node, found=None) -> list[dict]:
    """Every pod template spec (`template.spec`) anywhere in a manifest."""
    found = [] if found is None else found
    if isinstance(node, dict):
        if "template" in node and isinstance(node["template"], dict) and "spec" in node["template"]:
            found.append(node["template"]["spec"])
        for value in node.values():
            pod_templates(value, found)
    elif isinstance(node, list):
        for value in node:
            pod_templates(value, found)
    return found


def repo_path(path_in_image: str) -> Path:
    assert path_in_image.startswith(IMAGE_ROOT + "/"), f"{path_in_image}: not under {IMAGE_ROOT} in the image"
    return REPO / path_in_image[len(IMAGE_ROOT) + 1:]


def check_entrypoint(entrypoint: str):
    """`python -m maskunet_platform.cli CMD -c /app/SPEC ...`: the command exists, its options
    parse, the spec exists in the repository and validates. Returns (command name, job)."""
    from maskunet_platform.cli import main
    from maskunet_platform.config import load_job

    words = shlex.split(entrypoint)
    assert words[:3] == ["python", "-m", "maskunet_platform.cli"], entrypoint
    name, args = words[3], words[4:]
    assert name in main.commands, f"{name}: not a maskunet command"
    ctx = main.commands[name].make_context(name, list(args))  # unknown options raise here
    spec = repo_path(ctx.params["config_path"])
    assert spec.is_file(), spec
    return name, load_job(spec, ctx.params.get("overrides") or ())
