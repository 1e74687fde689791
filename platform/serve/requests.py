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

from maskunet_platform.config.serve import ServeLimits

FIELDS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "width", "height",
          "num_images", "masks")
MAX_SEED = 2**63 - 1


class RequestError(Exception):
    def __init__(self, status: int, field: Optional[str], message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": self.message}}


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

    def batch_key(self) -> tuple:
        """Requests with the same key can share one pipeline call (masks is a pipeline switch)."""
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


def _int(data: dict, field: str, default: int, low: int, high: int) -> int:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(422, field, f"must be an integer, got {json.dumps(value)}")
    if not low <= value <= high:
        raise RequestError(422, field, f"must be between {low} and {high}, got {value}")
    return value


def _float(data: dict, field: str, default: float, low: float, high: float) -> float:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(422, field, f"must be a number, got {json.dumps(value)}")
    if not low <= value <= high:
        raise RequestError(422, field, f"must be between {low} and {high}, got {value}")
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
    masks = data.get("masks", facts.has_masks)
    if not isinstance(masks, bool):
        raise RequestError(422, "masks", f"must be true or false, got {json.dumps(masks)}")
    if masks and not facts.has_masks:
        raise RequestError(422, "masks", "this model has no mask generator; send masks: false")
    seed = data["seed"] if "seed" in data else random.randint(0, 2**31 - 1)
    return GenerateRequest(
        prompt=_text(data, "prompt", facts, required=True),
        negative_prompt=_text(data, "negative_prompt", facts, required=False),
        num_inference_steps=_int(data, "num_inference_steps", facts.default_steps or limits.default_steps,
                                 limits.min_steps, limits.max_steps),
        guidance_scale=_float(data, "guidance_scale", _default_guidance(facts, limits), limits.min_guidance,
                              limits.max_guidance),
        seed=_int({"seed": seed}, "seed", 0, 0, MAX_SEED),
        width=_size(data, "width", facts, limits),
        height=_size(data, "height", facts, limits),
        num_images=_int(data, "num_images", 1, 1, limits.max_num_images),
        masks=masks)


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
