"""`data.subject` section: subject-driven (DreamBooth-style) training on a folder of images.

With `data.subject` set, `data.source` is a local folder of a few images of one subject;
every image is captioned with `instance_prompt`. With `num_class_images > 0` the base draws
that many images of `class_prompt` before training (prior preservation), and their rows
weigh `prior_loss_weight` in the loss. The report after training prompts the subject in
new contexts (`report.template`: other cells, other backgrounds) and counts, with the shapes
detector, how often it appears, base vs trained, paired.
"""
from typing import Optional

from pydantic import Field, field_validator, model_validator

from maskunet_platform.config.base import Section

# The locally built tokenizer of the shapes base has no token for "sks": it becomes the byte
# tokens s, k, s</w>, which no training caption contains (a rare identifier, as in DreamBooth).
DEFAULT_INSTANCE = "a sks circle in the center on a white background"
DEFAULT_CLASS = "a circle in the center on a white background"
DEFAULT_TEMPLATE = "a sks circle {where} on a {background} background"


class SubjectReportSection(Section):
    # New contexts: `template` with {where} (a grid cell phrase: "at the top left", "in the
    # center") and {background} (a colour) filled with contexts other than the instance images'.
    template: str = DEFAULT_TEMPLATE
    # The subject in words, same slots (e.g. "a large purple circle {where} on a {background}
    # background"): the base draws it too, as the ceiling of what it can draw there; None = off.
    words_template: Optional[str] = None
    prompts: int = Field(24, ge=0, le=99, description="new-context prompts; 0 = no report")
    seeds: int = Field(1, ge=1)
    steps: int = Field(20, ge=1)
    guidance: float = Field(7.5, ge=0)
    batch_size: int = Field(16, ge=1)
    seed: int = 0

    @field_validator("template", "words_template")
    @classmethod
    def _has_slots(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and ("{where}" not in v or "{background}" not in v):
            raise ValueError("must contain {where} and {background}")
        return v


class SubjectSection(Section):
    instance_prompt: str = Field(DEFAULT_INSTANCE, min_length=1)
    class_prompt: str = DEFAULT_CLASS
    # Prior preservation: images of class_prompt drawn by the base before training; 0 = off.
    num_class_images: int = Field(0, ge=0, le=1024)
    prior_loss_weight: float = Field(1.0, gt=0)
    class_steps: int = Field(20, ge=1, description="sampling steps of each class image")
    class_guidance: float = Field(7.5, ge=0)
    class_seed: int = 0
    # Rows per epoch of instance images (each repeated); with prior preservation at least
    # num_class_images, so that instance and class rows are equally many.
    instance_rows: int = Field(64, ge=1)
    report: SubjectReportSection = Field(default_factory=SubjectReportSection)

    @model_validator(mode="after")
    def _class_prompt_with_prior(self):
        if self.num_class_images and not self.class_prompt.strip():
            raise ValueError("class_prompt must be set when num_class_images > 0")
        return self
