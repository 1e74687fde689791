"""Load the frozen base pipeline parts (hub id, local folder or s3:// prefix) for training/eval."""
import fcntl
import os
import shutil
import tempfile
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
        return str(fetch_s3_folder(base, BASE_CACHE)[0])
    local = Path(base).expanduser()
    if local.exists() or base.startswith(("~", "/", ".")):
        if not (local / "model_index.json").exists():
            if not model.create_tiny_if_missing:
                raise FileNotFoundError(f"model.base {base!r} is not a diffusers pipeline folder "
                                        "(no model_index.json) and create_tiny_if_missing is false")
            from maskunet.tiny import ensure_tiny_base

            ensure_tiny_base(local, seed=model.tiny_seed, pretrained=model.tiny_pretrained)
        return str(local)
    return base  # a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5


def fetch_s3_folder(uri: str, cache: Path) -> tuple[Path, bool]:
    """(local copy of the s3:// pipeline folder, whether this call downloaded it).

    Every worker of a node calls this at once. Exactly one downloads, under an exclusive
    file lock, into a private staging folder that is renamed into place only when complete;
    the others wait on the lock and reuse the copy. A folder at the target path is always
    complete (renames are atomic), so readers never see a partial download.
    """
    target = cache / uri[len("s3://"):].strip("/").replace("/", "__")
    if (target / "model_index.json").exists():
        return target, False
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (target / "model_index.json").exists():
            return target, False
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=cache))
        try:
            s3fs_filesystem().get(uri.rstrip("/") + "/", str(staging / "base"), recursive=True)
            if not (staging / "base" / "model_index.json").exists():
                raise FileNotFoundError(f"model.base {uri!r} holds no diffusers pipeline (no model_index.json)")
            shutil.rmtree(target, ignore_errors=True)  # an incomplete folder left by an older version
            os.rename(staging / "base", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target, True


def s3fs_filesystem():
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})


def batch_inputs(base: FrozenBase, batch: dict[str, torch.Tensor], device, dtype,
                 vae_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, text-encoder states) in `dtype` on `device`: precomputed, or encoded from
    raw images + token ids by the frozen VAE and text encoder. Both paths sample the VAE
    posterior with `vae_generator` (encoded data: mean + std * eps, data/model_inputs.py);
    uint8 pixels are scaled to [-1, 1] after the copy to `device`."""
    from maskunet_platform.data.model_inputs import pixels_to_model, sample_latents

    if "latents" in batch:
        latents = sample_latents(batch["latents"], batch.get("latents_std"), device, vae_generator)
        return latents.to(dtype), batch["encoder_hidden_states"].to(device, dtype)
    if "pixel_values" not in batch or "input_ids" not in batch:
        raise KeyError(f"a batch needs latents+encoder_hidden_states or pixel_values+input_ids, got {sorted(batch)}")
    from maskunet.training import encode_images, encode_prompts

    pixels = pixels_to_model(batch["pixel_values"].to(device), base.vae.dtype)
    latents = encode_images(base.vae, pixels, generator=vae_generator)
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
