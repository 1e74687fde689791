"""`serve` section: the HTTP service (`maskunet serve`): limits, batching, replicas, auth, reload."""
import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from maskunet_platform.config.base import Section


REWARD_SPEC = re.compile(r"^(shapes|clip|hps|imagereward)(=[^:]+)?(:[0-9.eE+-]+)?$")


class ServeTrainingFree(Section):
    """Per-request training-free sampling (`"training_free": {...}` in a generate body, off
    unless a request asks): masks optimised against rewards while sampling, about 20x the
    cost of a plain image, so it has its own bounds."""
    enabled: bool = True
    # NAME[=PATH][:WEIGHT] as for `maskunet generate --reward`; paths are the server's own,
    # a request cannot name files.
    rewards: list[str] = Field(default_factory=lambda: ["shapes"], min_length=1)
    max_iterations: int = Field(200, ge=0, description="optimisation iterations of one request, summed over its steps")
    max_num_images: int = Field(1, ge=1)

    @field_validator("rewards")
    @classmethod
    def _specs(cls, value: list[str]) -> list[str]:
        bad = [spec for spec in value if not REWARD_SPEC.match(spec)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not NAME[=PATH][:WEIGHT] with NAME one of shapes, clip, hps, imagereward")
        return value


class ServeLimits(Section):
    """Bounds of a generate request; anything outside is a 422 naming the field."""
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(50, ge=1)
    default_steps: int = Field(20, ge=1, description="when the request and the registered model give none")
    min_guidance: float = Field(0.0, ge=0)
    max_guidance: float = Field(20.0, ge=0)
    default_guidance: float = Field(7.5, ge=0)
    min_size: int = Field(32, ge=8, description="width / height in pixels (multiples of 8)")
    max_size: int = Field(768, ge=8)
    max_num_images: int = Field(4, ge=1)
    training_free: ServeTrainingFree = Field(default_factory=ServeTrainingFree)

    @model_validator(mode="after")
    def _ordered(self):
        for low, high in (("min_steps", "max_steps"), ("min_guidance", "max_guidance"), ("min_size", "max_size")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} must not exceed {high}")
        return self


class ServeBatching(Section):
    """Dynamic batching (`@serve.batch`): compatible requests share one pipeline call."""
    max_batch_size: int = Field(8, ge=1, description="requests per batch; 1 turns batching off")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="how long a batch waits to fill")
    # Convolutions, group norms and 2-D linears one sample at a time, so a batched image is
    # byte-identical to the same request alone (serve/invariant.py); false: faster batches
    # whose floats may differ in the last bits from an unbatched call.
    batch_invariant: bool = True


class ServeAutoscaling(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)


class ServeAuth(Section):
    # The token is read from this environment variable (never from a file or the config);
    # None: no auth. Set but empty in the environment: refused at start.
    token_env: Optional[str] = None


class ServeSection(Section):
    host: str = Field("127.0.0.1", description="the Serve proxy's bind address")
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "maskunet"
    route_prefix: str = "/"
    num_replicas: int = Field(1, ge=1, description="fixed replicas (ignored when autoscaling is set)")
    autoscaling: Optional[ServeAutoscaling] = None
    cpus_per_replica: float = Field(1.0, ge=0)
    gpus_per_replica: float = Field(0.0, ge=0)
    torch_threads: Optional[int] = Field(None, ge=1, description="None: the replica's CPUs")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="the base's dtype in the replica; auto: fp16 on a GPU, fp32 on CPU (mask path stays fp32)")
    # Back-pressure: a replica holds one running batch plus the next one filling (and a few
    # slots for /healthz and /v1/model); beyond that at most max_queued_requests wait, the
    # rest get 503 + Retry-After at the proxy instead of growing memory.
    max_queued_requests: int = Field(32, ge=0)
    retry_after_s: float = Field(2.0, ge=0)
    reload_interval_s: float = Field(30.0, ge=0, description="how often models:/NAME@ALIAS is re-resolved; 0: never")
    tracking_uri: Optional[str] = None  # registry for --model; None: $MLFLOW_TRACKING_URI, else local
    limits: ServeLimits = Field(default_factory=ServeLimits)
    batching: ServeBatching = Field(default_factory=ServeBatching)
    auth: ServeAuth = Field(default_factory=ServeAuth)

    @field_validator("route_prefix")
    @classmethod
    def _route(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @property
    def max_ongoing_requests(self) -> int:
        """Two batches in the replica (one running, one filling) plus 2 for the small routes."""
        return 2 * self.batching.max_batch_size + 2
