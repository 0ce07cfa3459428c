"""Segmentation (docs/design.md §1.5): dense CLIP against the composed prompts, with the class filter."""

from __future__ import annotations

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.config.settings import Settings
from openseg_r.nodes.context import OpenSegContext
from openseg_r.schemas import ClassAlignment, ImageRef, PromptSet, SegmentationOutput, Vocabulary
from openseg_r.segmenters.base import ClassFilter


class SegmentationInput(BaseModel):
    image: ImageRef
    vocabulary: Vocabulary
    prompts: PromptSet
    settings: Settings = Field(default_factory=Settings)
    alignment: ClassAlignment | None = None


class SegmentationNodeOutput(BaseModel):
    segmentation: SegmentationOutput


def segmentation(state: SegmentationInput, runtime: Runtime[OpenSegContext]) -> SegmentationNodeOutput:
    ctx = runtime.context
    settings = state.settings
    names = state.vocabulary.names
    background = state.vocabulary.background_index
    present = None
    if settings.reasoning and state.alignment is not None and state.alignment.present is not None:
        index = {name: i for i, name in enumerate(names)}
        present = [index[name] for name in state.alignment.present if name in index]
    class_filter = ClassFilter(
        present=present,
        mode=settings.class_filter,
        soft_weight=settings.soft_filter_weight,
        keep=() if background is None else (background,),
    )
    bank = ctx.segmenter.query_bank(state.prompts)
    arrays = ctx.segmenter.segment(
        ctx.store.get(state.image.key),
        bank,
        class_filter=class_filter,
        logit_scale=settings.logit_scale,
        background_index=background,
        background_threshold=settings.background_threshold if background is not None else 0.0,
        image_key=state.image.key,
    )
    output = SegmentationOutput(
        labels_key=ctx.store.put(arrays.labels),
        confidence_key=ctx.store.put(arrays.confidence),
        runner_up_key=ctx.store.put(arrays.runner_up),
        margin_key=ctx.store.put(arrays.margin),
        runner_up_confidence_key=(
            ctx.store.put(arrays.runner_up_confidence) if arrays.runner_up_confidence is not None else None
        ),
        height=int(arrays.labels.shape[0]),
        width=int(arrays.labels.shape[1]),
        suppressed_classes=[names[i] for i in arrays.suppressed],
        background_pixels=arrays.background_pixels,
    )
    return SegmentationNodeOutput(segmentation=output)
