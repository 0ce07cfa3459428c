"""The graph state: only what a checkpoint or a trace should show (reasoning, prompts,
references to images and arrays, decisions and timings). Lists annotated with
``operator.add`` accumulate across nodes."""

from __future__ import annotations

import operator
from typing import Annotated

from pydantic import BaseModel, Field

from openseg_r.config.settings import Settings
from openseg_r.schemas import (
    ClassAlignment,
    ClassReasoning,
    Fallback,
    ImageReasoning,
    ImageRef,
    LMMCall,
    NodeTiming,
    PromptSet,
    RegionAnswer,
    SegmentationOutput,
    SegmentationReport,
    SelfCheckState,
    Vocabulary,
)


class OpenSegState(BaseModel):
    """The graph state. Lists with ``operator.add`` accumulate across nodes."""

    image: ImageRef
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    generic_reasoning: dict[str, ClassReasoning] | None = None
    image_reasoning: ImageReasoning | None = None
    alignment: ClassAlignment | None = None
    prompts: PromptSet | None = None
    segmentation: SegmentationOutput | None = None
    self_check: SelfCheckState | None = None
    region_answers: Annotated[list[RegionAnswer], operator.add] = Field(default_factory=list)
    report: SegmentationReport | None = None
    lmm_calls: Annotated[list[LMMCall], operator.add] = Field(default_factory=list)
    fallbacks: Annotated[list[Fallback], operator.add] = Field(default_factory=list)
    timings: Annotated[list[NodeTiming], operator.add] = Field(default_factory=list)
