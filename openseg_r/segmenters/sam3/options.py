"""The ``sam3`` kind's options (no torch here: listing kinds never loads a model).

SAM 3 (Meta, "SAM 3: Segment Anything with Concepts", arXiv 2511.16719) segments every
instance of a concept given as a short noun phrase. Each class of the vocabulary becomes a
few phrases (:mod:`openseg_r.segmenters.sam3.phrases`); every phrase's instances are
scored once per image against one image encoding.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from openseg_r.segmenters.base import SegmenterKind

DEFAULT_SAM3_MODEL = "facebook/sam3"


class Sam3Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        DEFAULT_SAM3_MODEL,
        description="a Hugging Face hub id (gated: accept the licence, set HF_TOKEN) or a local model folder",
    )
    revision: str | None = Field(None, description="the hub revision (a branch, tag or commit)")
    phrases_per_class: int = Field(
        4, ge=1, le=16, description="noun phrases per class: its name, synonyms, then attribute phrases"
    )
    max_phrases: int = Field(
        512, ge=1, le=10_000, description="the text budget: an image whose classes need more phrases is refused"
    )
    phrase_batch: int = Field(16, ge=1, le=1024, description="phrases per pass through SAM 3's detector and decoder")
    instance_threshold: float = Field(
        0.5, ge=0, le=1, description="an instance counts when its score (query x presence) is above this"
    )
    mask_threshold: float = Field(0.5, ge=0, le=1, description="a pixel is inside an instance's mask above this")
    max_instances: int = Field(100, ge=0, le=10_000, description="the most instances kept per image, best first")
    semantic_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a pixel no instance covers takes the class whose semantic map (SAM 3's semantic head x "
        "presence) is highest there, when above this (1: instances only)",
    )


SAM3 = SegmenterKind(
    name="sam3",
    summary="SAM 3, a trained concept segmenter: every instance of each class's noun phrases, then a label map",
    options=Sam3Options,
    build="openseg_r.segmenters.sam3.segmenter:build",
    speed_only=("phrase_batch",),
    instances=True,
)
