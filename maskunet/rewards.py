"""Differentiable image-text rewards for the training-free mode, and their weighted sum.

A reward maps images in [0, 1] (B, 3, H, W) and their prompts to a (B,) tensor, higher is
better, differentiable in the images. Built-in: `shapes` (no weights, shapes_reward.py),
`clip` (a transformers CLIP folder), `hps` (HPSv2.1 via open_clip) and `imagereward`
(the ImageReward package). Weights are only read from local safetensors files: nothing is
downloaded and nothing is unpickled; a missing package or file is a `RewardUnavailable`
naming it. The paper's reward, ReLU(2 - ImageReward) + 5 (1 - cos HPS) as a loss, is
`imagereward:1 hps:5` here (the same up to a constant).

Spec syntax: NAME[=PATH][:WEIGHT], e.g. `shapes`, `clip=/models/clip-vit-l:0.5`.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from maskunet.reward_spec import REWARD_NAMES, RewardSpec, parse_reward_spec  # noqa: F401 (re-exported)
from maskunet.shapes_reward import ShapesReward

# Where a reward's weights are looked up when the spec names no PATH.
PATH_VARIABLES = {"clip": "MASKUNET_CLIP_PATH", "hps": "MASKUNET_HPS_PATH", "imagereward": "MASKUNET_IMAGEREWARD_PATH"}


class RewardUnavailable(ValueError):
    """A reward whose package or local weights are missing."""


class WeightedReward:
    """sum_i w_i * reward_i(images, prompts)."""

    def __init__(self, terms: list[tuple[object, float]]):
        if not terms:
            raise ValueError("a weighted reward needs at least one term")
        self.terms = terms
        self.name = "+".join(f"{w:g}*{r.name}" for r, w in terms)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return sum(weight * reward(images, prompts) for reward, weight in self.terms)


def build_reward(specs: list[str | RewardSpec], device: str | torch.device = "cpu") -> WeightedReward:
    """The weighted sum of the rewards `specs` name (default: the weight-free shapes reward)."""
    parsed = [s if isinstance(s, RewardSpec) else parse_reward_spec(s) for s in (specs or ["shapes"])]
    return WeightedReward([(_build_one(spec, device), spec.weight) for spec in parsed])


def _build_one(spec: RewardSpec, device):
    if spec.name == "shapes":
        return ShapesReward()
    path = spec.path or os.environ.get(PATH_VARIABLES[spec.name])
    if not path:
        raise RewardUnavailable(f"reward {spec.name!r} needs local weights: {spec.name}=PATH or ${PATH_VARIABLES[spec.name]}")
    if spec.name == "clip":
        return ClipReward(path, device)
    if spec.name == "hps":
        return HpsReward(path, device)
    return ImageRewardReward(path, device)


def _require_package(module: str, reward: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise RewardUnavailable(f"reward {reward!r} needs the Python package {module!r}, which is not installed")


def _require_file(path: str, reward: str, suffix: str = ".safetensors") -> Path:
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix != suffix:
        raise RewardUnavailable(f"reward {reward!r}: weights {path} not found (a local {suffix} file is required)")
    return p


def _frozen(model: torch.nn.Module, device) -> torch.nn.Module:
    return model.to(device).eval().requires_grad_(False)


def _features(output) -> torch.Tensor:
    """transformers 5 returns an output object (pooler_output projected); 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _clip_pixels(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """CLIP preprocessing, differentiable: resize to size x size, normalise."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std


class ClipReward:
    """Cosine similarity of CLIP image and text embeddings (a transformers CLIP folder)."""

    name = "clip"

    def __init__(self, path: str, device="cpu"):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise RewardUnavailable(f"reward 'clip': {path} is not a local transformers CLIP folder (no config.json)")
        if not any(folder.glob("*.safetensors")):
            raise RewardUnavailable(f"reward 'clip': {path} has no .safetensors weights")
        self.model = _frozen(CLIPModel.from_pretrained(str(folder), use_safetensors=True), device)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        processor = CLIPImageProcessor.from_pretrained(str(folder))
        crop = processor.crop_size  # a dict (transformers 4), a SizeDict (5) or an int
        self.size = int(getattr(crop, "height", None) or (crop["height"] if isinstance(crop, dict) else crop))
        self.mean, self.std = processor.image_mean, processor.image_std

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        dtype, device = self.model.dtype, images.device
        pixels = _clip_pixels(images.float(), self.size, self.mean, self.std).to(dtype)
        image_features = _features(self.model.get_image_features(pixel_values=pixels))
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        with torch.no_grad():
            text_features = _features(self.model.get_text_features(**tokens))
        return F.cosine_similarity(image_features.float(), text_features.float(), dim=-1)


OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class HpsReward:
    """HPSv2.1: cosine of open_clip ViT-H-14 image and text embeddings with the HPS weights
    (a local safetensors conversion of HPS_v2.1_compressed.pt; the .pt is a pickle)."""

    name = "hps"

    def __init__(self, path: str, device="cpu"):
        _require_package("open_clip", "hps")
        weights = _require_file(path, "hps")
        import open_clip
        from safetensors.torch import load_file

        model = open_clip.create_model("ViT-H-14", pretrained=None)
        model.load_state_dict(load_file(str(weights)))
        self.model = _frozen(model, device)
        self.tokenizer = open_clip.get_tokenizer("ViT-H-14")

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = _clip_pixels(images.float(), 224, OPENAI_MEAN, OPENAI_STD)
        image_features = self.model.encode_image(pixels)
        with torch.no_grad():
            text_features = self.model.encode_text(self.tokenizer(prompts).to(images.device))
        return F.cosine_similarity(image_features.float(), text_features.float(), dim=-1)


class ImageRewardReward:
    """-ReLU(2 - ImageReward(image, prompt)) (the reference's hinge), from the ImageReward
    package's model class and a local safetensors conversion of its checkpoint."""

    name = "imagereward"

    def __init__(self, path: str, device="cpu"):
        _require_package("ImageReward", "imagereward")
        weights = _require_file(path, "imagereward")
        from ImageReward.ImageReward import ImageReward as ImageRewardModel
        from safetensors.torch import load_file

        med_config = Path(weights).with_name("med_config.json")
        if not med_config.is_file():
            raise RewardUnavailable(f"reward 'imagereward': {med_config} (the BLIP config) not found next to the weights")
        model = ImageRewardModel(med_config=str(med_config), device=str(device))
        model.load_state_dict(load_file(str(weights)), strict=False)
        self.model = _frozen(model, device)
        self.device = device

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tok = self.model.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                                        return_tensors="pt").to(images.device)
        pixels = _clip_pixels(images.float(), 224, OPENAI_MEAN, OPENAI_STD)
        embeds = self.model.blip.visual_encoder(pixels)
        atts = torch.ones(embeds.shape[:-1], dtype=torch.long, device=images.device)
        text = self.model.blip.text_encoder(tok.input_ids, attention_mask=tok.attention_mask,
                                            encoder_hidden_states=embeds, encoder_attention_mask=atts, return_dict=True)
        score = self.model.mlp(text.last_hidden_state[:, 0, :].float()).squeeze(-1)
        score = (score - self.model.mean) / self.model.std
        return -F.relu(2.0 - score)
