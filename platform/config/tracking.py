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
