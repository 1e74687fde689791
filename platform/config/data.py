"""`data` section: where training images come from and how they are preprocessed."""
from typing import Literal, Optional

from pydantic import Field, ValidationInfo, field_validator

from maskunet_platform.config.base import Section
from maskunet_platform.config.subject import SubjectSection


class DataSection(Section):
    # Subject-driven training (DreamBooth-style): `source` is then a local folder of images of
    # one subject (config/subject.py); None = an ordinary dataset. First, so that the
    # validators of the fields below can see it.
    subject: Optional[SubjectSection] = None
    # Local file/folder/glob, s3://bucket/prefix or hf://datasets/<owner>/<name>/<path>.
    source: str = Field("~/.cache/maskunet/sample-data", description="dataset URI")
    image_column: str = "image"
    caption_column: str = "text"
    aesthetic_column: str = "aesthetic"
    # Output side in pixels; the VAE downsamples 8x, so it must be a multiple of 8.
    resolution: int = Field(64, ge=8)
    crop: Literal["center", "random"] = "center"
    # Off by default: the sample captions say "left"/"right", which a flip would falsify.
    flip: bool = False
    # Filters, all off by default (None).
    min_side: Optional[int] = Field(None, ge=1, description="drop images whose shorter side is smaller")
    min_aesthetic: Optional[float] = Field(None, description="drop rows scoring below this")
    batch_size: int = Field(8, ge=1, description="rows per training batch on each worker")
    preprocess_batch_size: int = Field(32, ge=1, description="rows per map_batches call")
    # Precompute VAE latents + text-encoder states in an actor pool (GPU when available).
    encode: bool = False
    encode_actors: int = Field(1, ge=1)
    encode_device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPU share of each encode actor; trainers then take the rest of a GPU each
    # (`encode.trainer_gpu_share`), so actors and trainers fit on the same GPUs.
    encode_gpu_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    # Max concurrent preprocessing tasks; None lets Ray Data decide.
    parallelism: Optional[int] = Field(None, ge=1)
    seed: int = 0
    # Keep row order stable across runs (slower; for tests and debugging); no shuffle buffer.
    deterministic: bool = False
    # Read the row groups in a new order every epoch, drawn from (seed, epoch); off: file order.
    shuffle: bool = True
    # Rows each training worker mixes in a local shuffle buffer on top (0: off).
    shuffle_buffer: int = Field(256, ge=0, description="rows in each worker's local shuffle buffer")
    # Fraction of rows held out for evaluation: whole 32-row read units, chosen by a
    # stable hash of (file name, row group, unit), at least one unit (see data/units.py).
    holdout_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    # Extra attempts for a footer / row-group read failing with a transient error
    # (429, 5xx, timeouts), with exponential backoff from read_retry_backoff_s, jittered.
    read_retries: int = Field(5, ge=0)
    read_retry_backoff_s: float = Field(1.0, gt=0.0)
    # S3-compatible endpoint (MinIO, moto); default: AWS_ENDPOINT_URL from the environment.
    s3_endpoint_url: Optional[str] = None

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE downsamples 8x), got {v}")
        return v

    @field_validator("source", "holdout_fraction", "encode")
    @classmethod
    def _fits_a_subject_job(cls, v, info: ValidationInfo):
        if info.data.get("subject") is None:
            return v
        if info.field_name == "source" and "://" in v:
            raise ValueError("with data.subject, source must be a local folder of images of the subject")
        if info.field_name == "holdout_fraction" and v:
            raise ValueError("must be 0 with data.subject (a few images, none held out)")
        if info.field_name == "encode" and v:
            raise ValueError("not supported with data.subject (its rows carry loss weights)")
        return v
