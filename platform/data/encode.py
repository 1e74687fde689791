"""Optional encode stage: frozen VAE latents + text-encoder states in a Ray actor pool.

Each actor loads the base's `vae` and `text_encoder` once and encodes batches on its GPU
(when the cluster has GPUs, or `encode_device: cuda`) or on CPU. Latents are the mean
of the VAE posterior times the VAE's `scaling_factor`: deterministic, so shards written
once by `maskunet data encode` serve many runs.
"""
from __future__ import annotations

import numpy as np
import ray
import ray.data


class EncodeStage:
    """Callable class for `map_batches`: pixel_values/input_ids -> latents/encoder_hidden_states."""

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
        torch = self.torch
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixel_values"])).to(self.device)
            ids = torch.from_numpy(np.ascontiguousarray(batch["input_ids"])).to(self.device)
            latents = self.vae.encode(pixels).latent_dist.mean * self.scaling_factor
            hidden = self.text_encoder(ids)[0]
        return {
            "latents": latents.float().cpu().numpy(),
            "encoder_hidden_states": hidden.float().cpu().numpy(),
        }


def use_gpu_for_encoding(device: str) -> bool:
    if device == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return device == "cuda"


def add_encode_stage(ds: ray.data.Dataset, base: str, *, actors: int = 1, device: str = "auto",
                     batch_size: int = 32) -> ray.data.Dataset:
    gpu = use_gpu_for_encoding(device)
    return ds.map_batches(
        EncodeStage,
        fn_constructor_kwargs={"base": base, "device": "cuda" if gpu else "cpu"},
        batch_size=batch_size,
        batch_format="numpy",
        # On CPU Ray fuses preprocessing into these actors; raise `actors` to use more cores.
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpu else 0,
        num_cpus=0 if gpu else 1,
    )
