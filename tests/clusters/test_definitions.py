"""clusters/ and infra/ are valid for the real tools and reference only what exists: KubeRay
manifests against the v1.7.0 CRD schemas made strict, the VM launcher YAML against the schema
in the installed ray package, the serve config against Ray Serve's schema, the compose file
against the Compose Specification schema and through Docker Compose itself (its `config`
needs no daemon), images against what infra/ builds."""
import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.clusters import strict_schema
from tests.clusters.references import REPO, built_images, check_entrypoint, pod_templates
from tests.fixtures.debian import ensure_debian_binary

CLUSTERS = REPO / "clusters"
MANIFESTS = ["raycluster.yaml", "rayjob-train-sd15.yaml", "rayjob-sweep-sd15.yaml", "rayservice.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifest_is_valid_and_strict(name):
    manifest = load(name)
    assert strict_schema.errors(manifest) == []
    # A misspelled field: the CRD's own schema lets it through, the strict one names it.
    broken = copy.deepcopy(manifest)
    pods = pod_templates(broken)
    (pods[0]["containers"][0] if pods else broken["spec"])["imagePullPolcy"] = "Always"
    assert not list(strict_schema.plain_validator(manifest["kind"]).iter_errors(broken))
    assert any("imagePullPolcy" in e for e in strict_schema.errors(broken))


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifest_references_exist(name):
    from maskunet_platform.train.worker_env import SECRET_ENV

    manifest, images = load(name), built_images()
    for pod in pod_templates(manifest):
        for container in pod["containers"]:
            assert container["image"] in images, container["image"]
            literal = {e["name"] for e in container.get("env", []) if "value" in e}
            assert not literal & set(SECRET_ENV), literal  # credentials come from secrets only
    spec = manifest["spec"]
    if "runtimeEnvYAML" in spec:
        from ray.runtime_env import RuntimeEnv

        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert set(runtime_env) <= RuntimeEnv.known_fields
    if manifest["kind"] == "RayJob":
        command, job = check_entrypoint(spec["entrypoint"])
        assert (command == "sweep") == bool(job.tune.search_space)
        assert job.train.use_gpu and job.tracking.enabled
        if "clusterSelector" in spec:  # submitted to the RayCluster of raycluster.yaml
            assert spec["clusterSelector"] == {"ray.io/cluster": load("raycluster.yaml")["metadata"]["name"]}
        else:
            gpus = sum(g["maxReplicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
            assert gpus >= job.train.num_workers


def test_the_training_and_sweep_jobs_run_the_sd15_specs():
    assert "/app/jobs/sd15-laion-art.yaml" in load("rayjob-train-sd15.yaml")["spec"]["entrypoint"]
    assert "/app/jobs/sweep-sd15.yaml" in load("rayjob-sweep-sd15.yaml")["spec"]["entrypoint"]
    cluster = load("raycluster.yaml")["spec"]
    assert cluster["enableInTreeAutoscaling"] and cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayservice_serve_config_is_a_valid_serve_config():
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from maskunet_platform.config import load_job

    config = ServeDeploySchema.model_validate(yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"]))
    (app,) = config.applications
    module, attr = app.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    job = load_job(None, app.args["set"])  # the overrides are fields of the serve section
    assert job.serve.gpus_per_replica == 1 and job.serve.auth.token_env == "MASKUNET_SERVE_TOKEN"
    deploy = yaml.safe_load((REPO / "jobs" / "serve-deploy.yaml").read_text())
    assert app.import_path == deploy["applications"][0]["import_path"]  # the same app as serve-deploy.yaml
    assert config.http_options.host == "0.0.0.0"  # inside a pod; the Kubernetes service is the way in


def test_vm_cluster_launcher_yaml_validates_against_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTERS / "vm-aws.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["docker"]["image"] in built_images()
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) > 0 and t["max_workers"] > t.get("min_workers", 0) for t in types.values())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "dockr": {}}, schema)  # this schema itself rejects unknown keys


def test_runtime_env_file_for_the_image_is_accepted():
    from maskunet_platform.jobs.runtime_env import file_env

    env = file_env(str(CLUSTERS / "runtime-env-image.yaml"), {"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and "working_dir" not in env


def compose_validator():
    """The Compose Specification schema (tests/clusters/compose/README.md), plus the top-level
    `name` the specification gained later; unknown keys fail (additionalProperties: false)."""
    import jsonschema

    schema = json.loads((Path(__file__).parent / "compose" / "compose_spec.json").read_text())
    schema["properties"]["name"] = {"type": "string"}
    return jsonschema.Draft7Validator(schema)


def test_compose_file_is_well_formed_and_complete():
    """The Compose Specification schema (with `name`, which Compose 1.29 below lacks), then what
    neither the schema nor `config` can know."""
    compose = yaml.safe_load((REPO / "infra" / "compose.yaml").read_text())
    validator = compose_validator()
    assert [e.message for e in validator.iter_errors(compose)] == []
    broken = copy.deepcopy(compose)
    broken["services"]["mlflow"]["helthcheck"] = broken["services"]["mlflow"].get("healthcheck", {})
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken))
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    example = (REPO / "infra" / ".env.example").read_text()
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep, rule in (service.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in compose["volumes"], (name, source)
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)  # nothing on all interfaces by default
        for key, value in (service.get("environment") or {}).items():
            for var in re.findall(r"\$\{(\w+)(?::[?-][^}]*)?\}", str(value)):
                assert f"{var}=" in example, (name, key, var)
        if "build" in service:
            context = (REPO / "infra" / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file()
            assert service["image"] in built_images()
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


def test_docker_compose_itself_resolves_the_stack(tmp_path):
    """Debian's Docker Compose (1.29, installed when missing) parses, validates and resolves the
    file with the example env; only the top-level `name` (Compose v2) is left out for it."""
    compose = ensure_debian_binary("docker-compose", "docker-compose")
    spec = yaml.safe_load((REPO / "infra" / "compose.yaml").read_text())
    assert spec.pop("name") == "maskunet"

    def config(doc: dict) -> subprocess.CompletedProcess:
        path = tmp_path / "compose.yaml"
        path.write_text(yaml.safe_dump(doc))
        return subprocess.run([compose, "-f", str(path), "--project-directory", str(REPO / "infra"),
                               "--env-file", str(REPO / "infra" / ".env.example"), "config"],
                              capture_output=True, text=True, timeout=120)

    result = config(spec)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]  # interpolated from the example
    build = resolved["services"]["mlflow"]["build"]
    assert (Path(build["context"]) / build["dockerfile"]).is_file()
    spec["services"]["minio"]["helthcheck"] = spec["services"]["minio"].pop("healthcheck")
    broken = config(spec)
    assert broken.returncode != 0 and "helthcheck" in broken.stderr


def test_dockerfile_copies_what_exists_and_pins_torch():
    text = (REPO / "infra" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (REPO / source).exists(), source
    assert re.search(r"^WORKDIR /app$", text, flags=re.M) and "COPY jobs jobs" in text
    torch = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    assert f"torch=={torch}" in (REPO / "Makefile").read_text()
    env = (REPO / "infra" / "images.env").read_text()
    assert re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1) in env
    pins = (REPO / "infra" / "constraints.txt").read_text()
    assert re.search(r"^ray==2\.60\.", pins, flags=re.M) and re.search(r"^mlflow==3\.17\.", pins, flags=re.M)
