"""The loaded pipeline of one replica and how a batch of requests runs on it.

A batch from `@serve.batch` may mix sizes, step counts, guidance and masks on/off; it is
split into compatible groups, each one pipeline call in which every request keeps its own
prompt, negative prompt and seeds (one torch.Generator per image). The pipeline is made
batch-invariant (invariant.py), so a request's PNG bytes do not depend on its batch.
"""
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from maskunet_platform.serve.requests import GenerateRequest, ModelFacts


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a base (+ masks) or a registry URI."""
    base: Optional[str] = None
    masks: Optional[str] = None
    model_uri: Optional[str] = None
    tracking_uri: Optional[str] = None

    def describe(self) -> str:
        return self.model_uri or (self.base + (f" + masks {self.masks}" if self.masks else ""))


@dataclass
class LoadedModel:
    pipe: object
    base: str
    masks: Optional[str]
    registry: Optional[dict]  # {"name", "version", "alias"} for a registered model
    defaults: dict  # sampling defaults recorded with a registered model
    loaded_at: float = field(default_factory=time.time)
    download_dir: Optional[object] = None  # a registered version's downloaded files
    lock: threading.Lock = field(default_factory=threading.Lock)  # one pipeline call at a time

    def facts(self) -> ModelFacts:
        tokenizer = self.pipe.tokenizer
        # The tokenizer's limit includes the start and end tokens it adds.
        count = lambda text: len(tokenizer(text, truncation=False)["input_ids"])  # noqa: E731
        return ModelFacts(count_tokens=count, max_tokens=tokenizer.model_max_length,
                          default_size=self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor,
                          has_masks=self.pipe.tuning is not None,
                          default_steps=self.defaults.get("num_inference_steps"),
                          default_guidance=self.defaults.get("guidance_scale"))

    def describe(self) -> dict:
        return {"base": self.base, "masks": self.masks, "registry": self.registry,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}


def load_pipeline(base: str, masks: Optional[str], registry: Optional[dict] = None,
                  defaults: Optional[dict] = None, batch_invariant: bool = True) -> LoadedModel:
    import torch

    from maskunet import MaskUNetPipeline
    from maskunet_platform.serve.invariant import make_batch_invariant

    pipe = MaskUNetPipeline.from_base(base, masks=masks, use_safetensors=True)  # never pickled weights
    pipe.set_progress_bar_config(disable=True)
    if torch.cuda.is_available():
        pipe.to("cuda")
    if batch_invariant:
        make_batch_invariant(pipe.unet, pipe.vae, pipe.text_encoder,
                             *([pipe.mask_generator] if pipe.mask_generator else []))
    return LoadedModel(pipe, base, masks, registry, defaults or {})


def group_requests(requests: list[GenerateRequest]) -> list[list[int]]:
    """Indices of `requests` grouped by batch key, in arrival order."""
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.batch_key(), []).append(index)
    return list(groups.values())


def run_group(model: LoadedModel, requests: list[GenerateRequest]) -> list[list[bytes]]:
    """One pipeline call for compatible requests; PNG bytes per request (num_images each)."""
    import torch

    first = requests[0]
    prompts, negatives, generators = [], [], []
    for request in requests:
        for i in range(request.num_images):
            prompts.append(request.prompt)
            negatives.append(request.negative_prompt)
            generators.append(torch.Generator("cpu").manual_seed(request.seed + i))
    with model.lock, torch.inference_mode():
        model.pipe.masks_enabled = first.masks
        images = model.pipe(prompts, negative_prompt=negatives, num_inference_steps=first.num_inference_steps,
                            guidance_scale=first.guidance_scale, height=first.height, width=first.width,
                            generator=generators).images
    pngs = [_png(image) for image in images]
    out, start = [], 0
    for request in requests:
        out.append(pngs[start:start + request.num_images])
        start += request.num_images
    return out


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_batch(model: LoadedModel, requests: list[GenerateRequest]) -> list[dict]:
    """Results of one `@serve.batch` batch: each compatible group is one pipeline call."""
    results: list = [None] * len(requests)
    info = model.registry or {"name": None, "version": None, "alias": None}
    for indices in group_requests(requests):
        started = time.perf_counter()
        pngs = run_group(model, [requests[i] for i in indices])
        seconds = round(time.perf_counter() - started, 4)
        for i, images in zip(indices, pngs):
            results[i] = {"pngs": images, "batch_size": len(indices), "model": info,
                          "timings": {"pipeline_s": seconds}}
    return results
