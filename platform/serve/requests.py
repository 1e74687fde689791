"""Parsing and validating `POST /v1/generate` bodies.

Every problem is a `RequestError` (status, field, message): the service answers it as
`{"error": {"field", "message"}}` and never lets a bad request reach the pipeline (no 500s).
400: the body is not JSON / not an object; 415: wrong content type; 422: a field is missing,
unknown, of the wrong type or out of its configured bounds.
"""
import json
import math
import random
from dataclasses import dataclass
from typing import Callable, Optional

from maskunet_platform.config.serve import ServeLimits, ServeTrainingFree

FIELDS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "width", "height",
          "num_images", "masks", "training_free")
TRAINING_FREE_FIELDS = ("iterations", "schedule", "lr", "keep")
MAX_SEED = 2**63 - 1


class RequestError(Exception):
    def __init__(self, status: int, field: Optional[str], message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": self.message}}


@dataclass(frozen=True)
class TrainingFreeOptions:
    """A request's training-free sampling: iterations per step, AdamW lr, initial P(keep), and
    the service's reward specs."""
    schedule: str | int
    lr: float
    keep: float
    rewards: tuple[str, ...]


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    num_images: int
    masks: bool
    training_free: Optional[TrainingFreeOptions] = None

    def batch_key(self) -> tuple:
        """Requests with the same key can share one pipeline call (masks is a pipeline switch).
        A training-free request optimises its own masks, so it never shares a call."""
        if self.training_free is not None:
            return ("training_free", id(self))
        return self.width, self.height, self.num_inference_steps, self.guidance_scale, self.masks


@dataclass(frozen=True)
class ModelFacts:
    """What validation needs to know about the loaded model."""
    count_tokens: Callable[[str], int]
    max_tokens: int
    default_size: int
    has_masks: bool
    default_steps: Optional[int] = None
    default_guidance: Optional[float] = None
    tuning_kind: Optional[str] = None  # masks | lora | full | None (the base)


def parse_body(content_type: Optional[str], body: bytes) -> dict:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(415, "Content-Type", f"expected application/json, got {media or 'none'}")
    if not body.strip():
        raise RequestError(400, "body", "the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, "body", f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body", f"expected a JSON object, got {type(data).__name__}")
    return data


def _int(data: dict, field: str, default: int, low: int, high: int, prefix: str = "") -> int:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(422, prefix + field, f"must be an integer, got {json.dumps(value)}")
    if not low <= value <= high:
        raise RequestError(422, prefix + field, f"must be between {low} and {high}, got {value}")
    return value


def _float(data: dict, field: str, default: float, low: float, high: float, prefix: str = "") -> float:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(422, prefix + field, f"must be a number, got {json.dumps(value)}")
    if not low <= value <= high:
        raise RequestError(422, prefix + field, f"must be between {low} and {high}, got {value}")
    return float(value)


def _text(data: dict, field: str, facts: ModelFacts, required: bool) -> str:
    if field not in data:
        if required:
            raise RequestError(422, field, "is required")
        return ""
    value = data[field]
    if not isinstance(value, str):
        raise RequestError(422, field, f"must be a string, got {json.dumps(value)}")
    if required and not value.strip():
        raise RequestError(422, field, "must not be empty")
    tokens = facts.count_tokens(value)
    if tokens > facts.max_tokens:
        raise RequestError(422, field, f"is {tokens} tokens long; the model's limit is {facts.max_tokens}")
    return value


def _size(data: dict, field: str, facts: ModelFacts, limits: ServeLimits) -> int:
    value = _int(data, field, facts.default_size, limits.min_size, limits.max_size)
    if value % 8:
        raise RequestError(422, field, f"must be a multiple of 8, got {value}")
    return value


def validate(data: dict, limits: ServeLimits, facts: ModelFacts) -> GenerateRequest:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(422, unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    training_free = data.get("training_free", False)
    wants_training_free = not (training_free is False or training_free is None)
    masks = data.get("masks", facts.has_masks and not wants_training_free)
    if not isinstance(masks, bool):
        raise RequestError(422, "masks", f"must be true or false, got {json.dumps(masks)}")
    if masks and not facts.has_masks:
        raise RequestError(422, "masks", "this model has no mask generator; send masks: false")
    if masks and wants_training_free:
        raise RequestError(422, "masks", "training_free optimises its own masks over the base U-Net; send masks: false")
    if wants_training_free and facts.tuning_kind == "lora":
        raise RequestError(422, "training_free", "is not available on a LoRA model (its adapters wrap the masked layers)")
    seed = data["seed"] if "seed" in data else random.randint(0, 2**31 - 1)
    steps = _int(data, "num_inference_steps", facts.default_steps or limits.default_steps, limits.min_steps,
                 limits.max_steps)
    num_images = _int(data, "num_images", 1, 1, limits.max_num_images)
    return GenerateRequest(
        prompt=_text(data, "prompt", facts, required=True),
        negative_prompt=_text(data, "negative_prompt", facts, required=False),
        num_inference_steps=steps,
        guidance_scale=_float(data, "guidance_scale", _default_guidance(facts, limits), limits.min_guidance,
                              limits.max_guidance),
        seed=_int({"seed": seed}, "seed", 0, 0, MAX_SEED),
        width=_size(data, "width", facts, limits),
        height=_size(data, "height", facts, limits),
        num_images=num_images,
        masks=masks,
        training_free=_training_free(training_free, limits.training_free, steps, num_images))


def _training_free(value, limits: ServeTrainingFree, steps: int, num_images: int) -> Optional[TrainingFreeOptions]:
    """`"training_free": true | {"iterations": K} | {"schedule": "1x7,10x8", "lr": .., "keep": ..}`."""
    from maskunet.schedules import parse_iteration_schedule

    if value is False or value is None:
        return None
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise RequestError(422, "training_free", f"must be true, false or an object, got {json.dumps(value)}")
    if not limits.enabled:
        raise RequestError(422, "training_free", "is not enabled on this service")
    unknown = sorted(set(value) - set(TRAINING_FREE_FIELDS))
    if unknown:
        raise RequestError(422, f"training_free.{unknown[0]}",
                           f"unknown field (known: {', '.join(TRAINING_FREE_FIELDS)})")
    if "iterations" in value and "schedule" in value:
        raise RequestError(422, "training_free.schedule", "give iterations or schedule, not both")
    if num_images > limits.max_num_images:
        raise RequestError(422, "num_images", f"training-free requests allow at most {limits.max_num_images}")
    field = "iterations" if "iterations" in value else "schedule"
    schedule = (_int(value, "iterations", 0, 0, limits.max_iterations, "training_free.") if field == "iterations"
                else value.get("schedule", "reference"))
    if not isinstance(schedule, (str, int)) or isinstance(schedule, bool):
        raise RequestError(422, "training_free.schedule", f"must be a string or an integer, got {json.dumps(schedule)}")
    try:
        total = sum(parse_iteration_schedule(schedule, steps))
    except ValueError as e:
        raise RequestError(422, f"training_free.{field}", str(e)) from None
    if total > limits.max_iterations:
        raise RequestError(422, f"training_free.{field}", f"{total} iterations over {steps} steps; "
                                                           f"this service allows at most {limits.max_iterations}")
    return TrainingFreeOptions(schedule=schedule, lr=_float(value, "lr", 1e-2, 1e-5, 1.0, "training_free."),
                               keep=_float(value, "keep", 0.934, 0.5, 0.9999, "training_free."),
                               rewards=tuple(limits.rewards))


def _default_guidance(facts: ModelFacts, limits: ServeLimits) -> float:
    return limits.default_guidance if facts.default_guidance is None else facts.default_guidance


def wants_png(accept: Optional[str], request: GenerateRequest) -> bool:
    """`Accept: image/png` for one image gets the PNG itself; for several it is a 406."""
    if "image/png" not in (accept or "").lower():
        return False
    if request.num_images != 1:
        raise RequestError(406, "num_images", "Accept: image/png returns one image; ask for num_images 1 "
                                              "or accept application/json")
    return True
