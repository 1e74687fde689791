"""Registered versions with real evidence, on a real MLflow server.

Three mask generators over the shipped shapes base, scored on the same held-out rows and
shapes prompts by the platform's own scoring: `identity` keeps every weight (its loss is the
base's), `medium` drops some, `bad` drops about half. The held-out loss ranks them
identity < medium < bad. Beside them, the other methods' exports: `lora` (a LoRA whose
up-projections are random, so worse than the base) and `full` (a U-Net export holding the
base's own weights, so as good as the base), scored the same way.
"""
from dataclasses import dataclass
from pathlib import Path

import pytest

EVAL = {"rows": 16, "batch_size": 8, "shapes": {"prompts": 6, "seeds": 1, "steps": 4, "batch_size": 6}}
BIASES = {"bad": 0.0, "medium": 0.02, "identity": 12.0}  # drop ~50%, ~12%, nothing
METHODS = {"lora": "lora", "full": "full"}  # label -> train.method (the rest are masks)


@dataclass
class RegistryWorld:
    tracking_uri: str
    base: str
    data: str
    generators: dict[str, Path]
    evidence: dict[str, dict]  # label -> {kind: Evidence}
    work: Path

    def register(self, name: str, label: str, evidence=None, tracking_uri=None) -> str:
        """A new version of `name` holding generator `label`, tagged like a training run's
        (on the session's MLflow server, or another store)."""
        import json

        from mlflow import MlflowClient

        from maskunet_platform.registry.evidence import evidence_tags
        from maskunet_platform.registry.register import log_and_register

        tracking_uri = tracking_uri or self.tracking_uri
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("registry-tests") or client.get_experiment(
            client.create_experiment("registry-tests"))
        run = client.create_run(experiment.experiment_id, run_name=f"{name}-{label}")
        tags = {"run_id": run.info.run_id, "base_model": self.base, "data_source": self.data,
                "method": METHODS.get(label, "masks"), "mask_config": json.dumps({"logit_bias": BIASES.get(label)}),
                **evidence_tags(*(evidence or self.evidence[label]).values())}
        work = self.work / f"{name}-{label}-{run.info.run_id}"
        work.mkdir(parents=True)
        version = log_and_register(run.info.run_id, tracking_uri, name, self.base, self.generators[label], tags,
                                   {"num_inference_steps": 2, "guidance_scale": 7.5}, work)
        client.set_terminated(run.info.run_id)
        return str(version.version)


def eval_job(data: str, **eval_updates):
    from maskunet_platform.config import JobConfig

    return JobConfig.model_validate({"data": {"source": data}, "train": {"eval": {**EVAL, **eval_updates}},
                                     "tracking": {"enabled": False}})


@pytest.fixture(scope="session")
def registry_world(mlflow_server, shapes_base, sample_data, ray_local, lora_export, tmp_path_factory) -> RegistryWorld:
    import torch
    from diffusers import UNet2DConditionModel

    from maskunet import MaskGenerator
    from maskunet.generator import MaskConfig
    from maskunet_platform.registry.evaluate import score

    work = tmp_path_factory.mktemp("registry")
    data = sample_data(64, 2, 11)
    unet = UNet2DConditionModel.from_pretrained(shapes_base, subfolder="unet")
    generators, evidence = {}, {}
    for label, bias in BIASES.items():
        torch.manual_seed(0)
        folder = work / "generators" / label
        MaskGenerator.from_unet(unet, MaskConfig(logit_bias=bias)).save_pretrained(folder)
        generators[label] = folder
    unet.save_pretrained(work / "generators" / "full")  # what train.method=full exports: a U-Net folder
    generators |= {"lora": Path(lora_export) / "lora", "full": work / "generators" / "full"}
    for label, folder in generators.items():
        evidence[label] = score(eval_job(data), shapes_base, folder, data, "all", ["heldout", "shapes"])
    return RegistryWorld(mlflow_server.tracking_uri, shapes_base, data, generators, evidence, work)
