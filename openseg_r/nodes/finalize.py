"""Finalize: per-class area and mean confidence, the summary a person reads first."""

from __future__ import annotations

import numpy as np
from langgraph.runtime import Runtime
from pydantic import BaseModel

from openseg_r.nodes.context import OpenSegContext
from openseg_r.schemas import (
    ClassSummary,
    SegmentationOutput,
    SegmentationReport,
    SelfCheckState,
    Vocabulary,
    final_output,
)


class FinalizeInput(BaseModel):
    vocabulary: Vocabulary
    segmentation: SegmentationOutput
    self_check: SelfCheckState | None = None  # when present, its output is the final label map


class FinalizeOutput(BaseModel):
    report: SegmentationReport


def finalize(state: FinalizeInput, runtime: Runtime[OpenSegContext]) -> FinalizeOutput:
    store = runtime.context.store
    output = final_output(state.segmentation, state.self_check)
    labels = store.get(output.labels_key)
    confidence = store.get(output.confidence_key)
    num_classes = len(state.vocabulary.classes)
    flat = labels.ravel()
    known = flat >= 0  # UNKNOWN_LABEL pixels belong to no class
    pixels = np.bincount(flat[known], minlength=num_classes)
    confidence_sums = np.bincount(
        flat[known], weights=confidence.ravel()[known].astype(np.float64), minlength=num_classes
    )
    total = max(1, flat.size)
    summaries = []
    for index, cls in enumerate(state.vocabulary.classes):
        count = int(pixels[index])
        summaries.append(
            ClassSummary(
                index=index,
                name=cls.name,
                pixels=count,
                area_fraction=round(count / total, 6),
                mean_confidence=round(float(confidence_sums[index] / count), 6) if count else None,
            )
        )
    present = [s.name for s in sorted(summaries, key=lambda s: -s.pixels) if s.pixels > 0]
    unknown = int(flat.size - known.sum())
    return FinalizeOutput(report=SegmentationReport(classes=summaries, present_classes=present, unknown_pixels=unknown))
