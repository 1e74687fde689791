"""Optional encode stage: frozen VAE posterior + text-encoder states in a Ray actor pool.

Each actor loads the base's `vae` and `text_encoder` once and encodes batches on a GPU
(when the cluster has GPUs, or `encode_device: cuda`) or on CPU. On a GPU an actor takes
`data.encode_gpu_fraction` of one, and the trainers take the rest (`trainer_gpu_share`):
a whole GPU per actor could never be granted while the trainers hold every GPU.

Output: `latents` = the posterior mean and `latents_std` = its standard deviation, both
times the VAE's `scaling_factor`. The training worker draws `latents + latents_std * eps`
with its own generator (`model_inputs.sample_latents`), exactly as the raw-image path
samples the posterior, so shards written once by `maskunet data encode` serve many runs
and every epoch still sees fresh samples.
"""
from __future__ import annotations

import numpy as np
import ray
import ray.data

from maskunet_platform.config.data import DataSection


class EncodeStage:
    """Callable class for `map_batches`: pixel_values/input_ids -> latents(+std)/encoder_hidden_states."""

    def __init__(self, base: str, device: str = "cpu"):
        import torch
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        self.torch = torch
        self.device = torch.device(device)
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae").to(self.device).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").to(self.device).eval()
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.scaling_factor = float(self.vae.config.scaling_factor)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from maskunet_platform.data.model_inputs import pixels_to_model

        torch = self.torch
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixel_values"])).to(self.device)
            ids = torch.from_numpy(np.ascontiguousarray(batch["input_ids"])).to(self.device)
            posterior = self.vae.encode(pixels_to_model(pixels, self.vae.dtype)).latent_dist
            hidden = self.text_encoder(ids)[0]
        return {
            "latents": (posterior.mean * self.scaling_factor).float().cpu().numpy(),
            "latents_std": (posterior.std * self.scaling_factor).float().cpu().numpy(),
            "encoder_hidden_states": hidden.float().cpu().numpy(),
        }


def use_gpu_for_encoding(device: str) -> bool:
    if device == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return device == "cuda"


def encodes_on_gpu(cfg: DataSection) -> bool:
    """True when `cfg` puts an encode stage on GPUs (needs Ray up when encode_device is auto)."""
    return cfg.encode and use_gpu_for_encoding(cfg.encode_device)


def trainer_gpu_share(cfg: DataSection) -> float:
    """The GPU share each training worker should request: 1 - encode_gpu_fraction when the
    encode stage runs on GPUs (so one actor fits beside each trainer), else 1.0."""
    return 1.0 - cfg.encode_gpu_fraction if encodes_on_gpu(cfg) else 1.0


def encode_resources(gpu: bool, gpu_fraction: float) -> dict[str, float]:
    """Ray resources of one encode actor: a GPU share, or one CPU."""
    return {"num_gpus": gpu_fraction, "num_cpus": 0} if gpu else {"num_gpus": 0, "num_cpus": 1}


def add_encode_stage(ds: ray.data.Dataset, base: str, *, actors: int = 1, device: str = "auto",
                     batch_size: int = 32, gpu_fraction: float = 0.25) -> ray.data.Dataset:
    gpu = use_gpu_for_encoding(device)
    return ds.map_batches(
        EncodeStage,
        fn_constructor_kwargs={"base": base, "device": "cuda" if gpu else "cpu"},
        batch_size=batch_size,
        batch_format="numpy",
        # On CPU Ray fuses preprocessing into these actors; raise `actors` to use more cores.
        compute=ray.data.ActorPoolStrategy(size=actors),
        **encode_resources(gpu, gpu_fraction),
    )
