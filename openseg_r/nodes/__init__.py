"""One module per step. Each node is a typed function ``node(input_model, runtime) -> output_model``
and can be called alone: ``node(Input(...), Runtime(context=OpenSegContext(...)))``."""

from openseg_r.nodes.class_alignment import ClassAlignmentInput, ClassAlignmentOutput, class_alignment
from openseg_r.nodes.finalize import FinalizeInput, FinalizeOutput, finalize
from openseg_r.nodes.generic_reasoning import GenericReasoningInput, GenericReasoningOutput, generic_reasoning
from openseg_r.nodes.image_reasoning import ImageReasoningInput, ImageReasoningOutput, image_reasoning
from openseg_r.nodes.prompt_composition import PromptCompositionInput, PromptCompositionOutput, prompt_composition
from openseg_r.nodes.segmentation import SegmentationInput, SegmentationNodeOutput, segmentation
from openseg_r.nodes.self_check import (
    ApplyDecisionsInput,
    CheckRegionInput,
    FindRegionsInput,
    apply_decisions,
    check_region,
    find_ambiguous_regions,
)

__all__ = [
    "ClassAlignmentInput",
    "ClassAlignmentOutput",
    "FinalizeInput",
    "FinalizeOutput",
    "GenericReasoningInput",
    "GenericReasoningOutput",
    "ImageReasoningInput",
    "ImageReasoningOutput",
    "PromptCompositionInput",
    "PromptCompositionOutput",
    "SegmentationInput",
    "SegmentationNodeOutput",
    "class_alignment",
    "finalize",
    "generic_reasoning",
    "image_reasoning",
    "prompt_composition",
    "segmentation",
    "ApplyDecisionsInput",
    "CheckRegionInput",
    "FindRegionsInput",
    "apply_decisions",
    "check_region",
    "find_ambiguous_regions",
]
