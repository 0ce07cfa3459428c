"""The dense-CLIP segmenter's options: which CLIP weights, and how it infers (the
training-free last block, the image's size, sliding windows, PAMR). No torch here: the
command line's help and the registry read these without loading a model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openseg_r.segmenters.base import SegmenterKind

ATTENTION_VARIANTS = ("naclip", "sclip", "clearclip", "maskclip", "vanilla")
Attention = Literal[ATTENTION_VARIANTS]  # type: ignore[valid-type]
RANDOM_WEIGHTS = ("none", "random")
DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_PRETRAINED = "openai"


class SegmenterConfig(BaseModel):
    """Dense-CLIP inference settings (docs/design.md §2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attention: Attention = Field("naclip", description="the training-free last block")
    short_side: int = Field(336, ge=1, description="the image's short side is resized to this")
    max_long_side: int = Field(2048, ge=1, description="the long side after resizing is capped at this")
    crop: int = Field(224, ge=1, description="sliding-window size")
    stride: int = Field(112, ge=1, description="sliding-window stride")
    slide: bool = Field(True, description="False runs the whole resized image at once")
    window_batch_size: int | None = Field(
        None,
        ge=1,
        description="windows per forward pass (None: 8 on the CPU, where larger passes fall out of "
        "cache; 256 on a GPU)",
    )
    gaussian_sigma: float = Field(5.0, gt=0, description="NACLIP's neighbourhood bias")
    pamr_steps: int = Field(0, ge=0, le=100, description="PAMR refinement iterations (0: off; NACLIP uses 10)")
    pamr_dilations: tuple[int, ...] = Field((8, 16), min_length=1, description="PAMR's neighbourhood dilations")
    compile: bool = Field(False, description="run the vision tower through torch.compile (slow first call)")


# SegmenterConfig fields that change how fast results come, never the results themselves.
SPEED_ONLY_FIELDS = ("window_batch_size", "compile")


class CLIPWeights(BaseModel):
    """Which open_clip CLIP: the options every CLIP-based kind shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_model: str = Field(
        DEFAULT_CLIP_MODEL,
        description="open_clip model name (ViT-B-16, ViT-L-14, ViT-H-14, ...), hf-hub:ORG/REPO, local-dir:PATH "
        "or a config JSON",
    )
    clip_pretrained: str | None = Field(
        DEFAULT_CLIP_PRETRAINED, description="pretrained tag or weights file; 'none' for random weights"
    )

    @field_validator("clip_pretrained", mode="before")
    @classmethod
    def _random_weights(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in RANDOM_WEIGHTS:
            return None
        return value

    @property
    def random_weights(self) -> bool:
        """No trained weights: the segmentation is meaningless (tests, benchmarks)."""
        return self.clip_pretrained is None and not self.clip_model.startswith(("hf-hub:", "local-dir:"))


class DenseCLIPOptions(SegmenterConfig, CLIPWeights):
    """The dense-CLIP kind's options: the weights, and the inference settings above."""

    def inference(self) -> SegmenterConfig:
        """The inference settings alone (what :class:`CLIPSegmenter` takes beside the model)."""
        return SegmenterConfig(**self.model_dump(exclude={"clip_model", "clip_pretrained"}))


DENSE_CLIP = SegmenterKind(
    name="dense-clip",
    summary="training-free dense CLIP (NACLIP and its relatives): every pixel scored against the prompts",
    options=DenseCLIPOptions,
    build="openseg_r.segmenters.dense_clip.segmenter:build",
    speed_only=SPEED_ONLY_FIELDS,
    variants={"attention": ATTENTION_VARIANTS},
)
