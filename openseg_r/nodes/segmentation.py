"""Segmentation (docs/design.md §1.5): the segmenter against the composed prompts, with the class filter;
instances too, from segmenters that find them."""

from __future__ import annotations

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.config.settings import Settings
from openseg_r.nodes.context import OpenSegContext
from openseg_r.schemas import (
    ClassAlignment,
    Fallback,
    ImageRef,
    InstanceRecord,
    PromptSet,
    SegmentationOutput,
    Vocabulary,
)
from openseg_r.segmenters.base import ClassFilter


class SegmentationInput(BaseModel):
    image: ImageRef
    vocabulary: Vocabulary
    prompts: PromptSet
    settings: Settings = Field(default_factory=Settings)
    alignment: ClassAlignment | None = None


class SegmentationNodeOutput(BaseModel):
    segmentation: SegmentationOutput
    fallbacks: list[Fallback] = Field(default_factory=list)


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
        phrases=_phrases_by_class(arrays, names),
        instances=_instance_records(arrays, names),
    )
    fallbacks = []
    if arrays.instances is not None and not arrays.instances:  # a stated result, not an error
        fallbacks.append(
            Fallback(
                step="segmentation",
                reason="the segmenter found no instance of any class",
                used="an all-background label map (unknown where the vocabulary has no background)",
            )
        )
    return SegmentationNodeOutput(segmentation=output, fallbacks=fallbacks)


def _phrases_by_class(arrays, names: list[str]) -> dict[str, list[str]] | None:
    """The phrases a phrase-driven segmenter was sent, by class (the trace shows them)."""
    if arrays.phrases is None:
        return None
    by_class: dict[str, list[str]] = {}
    for index, phrase in arrays.phrases:
        by_class.setdefault(names[index], []).append(phrase)
    return by_class


def _instance_records(arrays, names: list[str]) -> list[InstanceRecord] | None:
    if arrays.instances is None:
        return None
    return [
        InstanceRecord(
            class_name=names[i.class_index], phrase=i.phrase, score=round(i.score, 6), box=i.box, mask=i.mask
        )
        for i in arrays.instances
    ]
