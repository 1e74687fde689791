"""The loaded pipeline of one replica and how a batch of requests runs on it.

A batch from `@serve.batch` may mix sizes, step counts, guidance and masks on/off; it is
split into compatible groups, each one pipeline call in which every request keeps its own
prompt, negative prompt and seeds (one torch.Generator per image). The pipeline is made
batch-invariant (invariant.py), so a request's PNG bytes do not depend on its batch.
"""
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from maskunet_platform.serve.requests import GenerateRequest, ModelFacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from (a base (+ weights) or a registry URI), and `model.compile`."""
    base: Optional[str] = None
    masks: Optional[str] = None
    model_uri: Optional[str] = None
    tracking_uri: Optional[str] = None
    compile: str = "auto"

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
    rewards: dict = field(default_factory=dict)  # training-free rewards, built on first use

    def facts(self) -> ModelFacts:
        tokenizer = self.pipe.tokenizer
        # The tokenizer's limit includes the start and end tokens it adds.
        count = lambda text: len(tokenizer(text, truncation=False)["input_ids"])  # noqa: E731
        return ModelFacts(count_tokens=count, max_tokens=tokenizer.model_max_length,
                          default_size=self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor,
                          has_masks=self.pipe.tuning is not None, tuning_kind=self.pipe.tuning_kind,
                          default_steps=self.defaults.get("num_inference_steps"),
                          default_guidance=self.defaults.get("guidance_scale"))

    def describe(self) -> dict:
        return {"base": self.base, "masks": self.masks, "tuning": self.pipe.tuning_kind, "registry": self.registry,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}


@dataclass(frozen=True)
class LoadOptions:
    """How a replica loads its pipeline (from `serve.batching.batch_invariant`, `serve.precision`,
    `model.compile`)."""
    batch_invariant: bool = True
    precision: str = "auto"  # auto (fp16 on a GPU, fp32 on CPU) | fp32 | fp16 | bf16
    compile: str = "auto"

    def dtype(self, cuda: bool):
        import torch

        name = self.precision if self.precision != "auto" else ("fp16" if cuda else "fp32")
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def load_pipeline(base: str, masks: Optional[str], registry: Optional[dict] = None,
                  defaults: Optional[dict] = None, options: LoadOptions = LoadOptions()) -> LoadedModel:
    import torch

    from maskunet import MaskUNetPipeline
    from maskunet_platform.serve.invariant import make_batch_invariant

    cuda = torch.cuda.is_available()
    # Never pickled weights. The mask generator stays fp32 whatever the base's dtype (its
    # logits and thresholds are fp32 by design, see maskunet/gumbel.py).
    pipe = MaskUNetPipeline.from_base(base, masks=masks, use_safetensors=True, dtype=options.dtype(cuda))
    pipe.set_progress_bar_config(disable=True)
    if cuda:
        pipe.to("cuda")
    if options.batch_invariant:
        make_batch_invariant(pipe.unet, pipe.vae, pipe.text_encoder,
                             *([pipe.mask_generator] if pipe.mask_generator else []))
    _maybe_compile(pipe.unet, options, "cuda" if cuda else "cpu")
    return LoadedModel(pipe, base, masks, registry, defaults or {})


def _maybe_compile(unet, options: LoadOptions, device: str) -> None:
    """torch.compile the U-Net per `model.compile`, except under batch invariance: compiled
    kernels are chosen per batch shape, so byte-identical images across batchings would no
    longer be guaranteed (and are not measured)."""
    from maskunet.compile import compile_module, compile_wanted

    if not compile_wanted(options.compile, device):
        return
    if options.batch_invariant:
        log.warning("model.compile=%s: not compiling, serve.batching.batch_invariant is on (set it false to "
                    "compile the U-Net)", options.compile)
        return
    compile_module(unet)


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


def run_training_free(model: LoadedModel, request: GenerateRequest) -> tuple[list[bytes], dict]:
    """One training-free request (maskunet.training_free) on the replica's pipeline, with
    DPM-Solver++ 2M as `maskunet generate --training-free` uses; PNGs and a short report."""
    import torch

    from maskunet.rewards import build_reward
    from maskunet.schedules import make_scheduler
    from maskunet.training_free import TrainingFreeConfig, TrainingFreeSampler

    options, n = request.training_free, request.num_images
    config = TrainingFreeConfig(schedule=options.schedule, lr=options.lr, keep_probability=options.keep,
                                seed=request.seed, track_rewards=False)
    generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(n)]
    with model.lock, torch.no_grad():  # not inference_mode: the sampler needs autograd
        pipe, scheduler = model.pipe, model.pipe.scheduler
        if options.rewards not in model.rewards:
            model.rewards[options.rewards] = build_reward(list(options.rewards), device=pipe.unet.device)
        pipe.scheduler = make_scheduler("dpm++2m", scheduler.config)  # under the lock: no other call sees it
        pipe.masks_enabled = False  # the base U-Net (a full fine-tune's is swapped out; trained masks pause)
        try:
            out = TrainingFreeSampler(pipe, model.rewards[options.rewards], config)(
                [request.prompt] * n, negative_prompt=[request.negative_prompt] * n,
                num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                height=request.height, width=request.width, generator=generators)
        finally:
            pipe.scheduler = scheduler
    optimised = [s for s in out.steps if s.iterations]
    last = optimised[-1].drop_fraction if optimised else {}
    report = {"iterations": sum(s.iterations for s in out.steps), "rewards": list(options.rewards),
              "reward_before": [round(s.reward_before, 6) for s in optimised],
              "drop_fraction_last_step": round(sum(last.values()) / len(last), 6) if last else 0.0,
              "seconds": round(out.seconds, 4)}
    return [_png(image) for image in out.images], report


def run_batch(model: LoadedModel, requests: list[GenerateRequest]) -> list[dict]:
    """Results of one `@serve.batch` batch: each compatible group is one pipeline call."""
    results: list = [None] * len(requests)
    info = model.registry or {"name": None, "version": None, "alias": None}
    for indices in group_requests(requests):
        started = time.perf_counter()
        group = [requests[i] for i in indices]
        if group[0].training_free is not None:
            pngs, report = run_training_free(model, group[0])
            results[indices[0]] = {"pngs": pngs, "batch_size": 1, "model": info, "training_free": report,
                                   "timings": {"pipeline_s": round(time.perf_counter() - started, 4)}}
            continue
        pngs = run_group(model, group)
        seconds = round(time.perf_counter() - started, 4)
        for i, images in zip(indices, pngs):
            results[i] = {"pngs": images, "batch_size": len(indices), "model": info,
                          "timings": {"pipeline_s": seconds}}
    return results
