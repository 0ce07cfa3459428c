"""The dense-CLIP segmenter's options: which CLIP weights, and how it infers (the
training-free last block, the image's size, sliding windows, PAMR). No torch here: the
command line's help and the registry read these without loading a model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
        None, ge=1, description="windows per forward pass (None: 8 on the CPU, where larger passes fall out of "
        "cache; 256 on a GPU)"
    )
    gaussian_sigma: float = Field(5.0, gt=0, description="NACLIP's neighbourhood bias")
    pamr_steps: int = Field(0, ge=0, le=100, description="PAMR refinement iterations (0: off; NACLIP uses 10)")
    pamr_dilations: tuple[int, ...] = Field((8, 16), min_length=1, description="PAMR's neighbourhood dilations")
    compile: bool = Field(False, description="run the vision tower through torch.compile (slow first call)")


# SegmenterConfig fields that change how fast results come, never the results themselves.
SPEED_ONLY_FIELDS = ("window_batch_size", "compile")
