"""Load the frozen base pipeline parts (hub id, local folder or s3:// prefix) for training/eval."""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskunet_platform.config.model import ModelSection

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision
BASE_CACHE = Path("~/.cache/maskunet/bases").expanduser()


@dataclass
class FrozenBase:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # DDPM training scheduler built from the base's scheduler config
    location: str  # local folder or hub id it was loaded from


def resolve_base(model: ModelSection) -> str:
    """A local folder or hub id for `model.base`; builds the tiny base or downloads s3:// first."""
    base = model.base
    if base.startswith("s3://"):
        return str(_download_s3_folder(base))
    local = Path(base).expanduser()
    if local.exists() or base.startswith(("~", "/", ".")):
        if not (local / "model_index.json").exists():
            if not model.create_tiny_if_missing:
                raise FileNotFoundError(f"model.base {base!r} is not a diffusers pipeline folder "
                                        "(no model_index.json) and create_tiny_if_missing is false")
            from maskunet.tiny import ensure_tiny_base

            ensure_tiny_base(local, seed=model.tiny_seed)
        return str(local)
    return base  # a hub id such as runwayml/stable-diffusion-v1-5


def _download_s3_folder(uri: str) -> Path:
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})
    target = BASE_CACHE / uri[len("s3://"):].strip("/").replace("/", "__")
    if not (target / "model_index.json").exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        fs.get(uri.rstrip("/") + "/", str(partial), recursive=True)
        if not (partial / "model_index.json").exists():
            raise FileNotFoundError(f"model.base {uri!r} holds no diffusers pipeline (no model_index.json)")
        partial.rename(target)
    return target


def batch_inputs(base: FrozenBase, batch: dict[str, torch.Tensor], device, dtype,
                 vae_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, text-encoder states) in `dtype` on `device`: precomputed, or encoded from
    raw images + token ids by the frozen VAE and text encoder."""
    if "latents" in batch:
        return batch["latents"].to(device, dtype), batch["encoder_hidden_states"].to(device, dtype)
    if "pixel_values" not in batch or "input_ids" not in batch:
        raise KeyError(f"a batch needs latents+encoder_hidden_states or pixel_values+input_ids, got {sorted(batch)}")
    from maskunet.training import encode_images, encode_prompts

    latents = encode_images(base.vae, batch["pixel_values"].to(device, base.vae.dtype), generator=vae_generator)
    return latents.to(dtype), encode_prompts(base.text_encoder, batch["input_ids"].to(device)).to(dtype)


def load_frozen_base(model: ModelSection, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, with_vae: bool = True) -> FrozenBase:
    """U-Net, VAE, text encoder (all frozen, eval mode) + tokenizer + DDPM training scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    location = resolve_base(model)
    kwargs = {"revision": model.revision} if model.revision else {}
    unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", **kwargs)
    vae = AutoencoderKL.from_pretrained(location, subfolder="vae", **kwargs) if with_vae else None
    text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", **kwargs)
    tokenizer = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", **kwargs)
    scheduler = DDPMScheduler.from_pretrained(location, subfolder="scheduler", **kwargs)
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.requires_grad_(False).eval().to(device, dtype)
    return FrozenBase(unet, vae, text_encoder, tokenizer, scheduler, location)
