"""`tracking` section: MLflow run, artifacts and model registry."""
from typing import Optional

from pydantic import Field

from maskunet_platform.config.base import Section


class TrackingSection(Section):
    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI, else the embedded local sqlite store below.
    tracking_uri: Optional[str] = None
    local_store: str = Field("~/.cache/maskunet/mlflow", description="sqlite db + artifacts dir")
    experiment: str = "maskunet"
    # Artifact root for a newly created experiment (local dir or s3://); None = server default.
    artifact_location: Optional[str] = None
    log_samples: bool = True
    log_heatmap: bool = True
    register_model: bool = True
    registered_model_name: str = "maskunet-masks"
    tags: dict[str, str] = Field(default_factory=dict)
    # Training-side metric logging runs in a background thread: a slow or unreachable server
    # never stalls a step. Batches wait in a bounded buffer (oldest dropped when full).
    buffer_batches: int = Field(10000, ge=1, description="metric batches buffered while the server is unreachable")
    request_timeout_s: float = Field(10.0, gt=0, description="one MLflow request; failures are retried with backoff")
    flush_timeout_s: float = Field(60.0, ge=0, description="how long closing waits for buffered metrics")
