"""Finalize: per-class area and mean confidence, the summary a person reads first."""

from __future__ import annotations

import numpy as np
from langgraph.runtime import Runtime
from pydantic import BaseModel

from openseg_r.graph.context import OpenSegContext
from openseg_r.state import ClassSummary, SegmentationOutput, SegmentationReport, Vocabulary


class FinalizeInput(BaseModel):
    vocabulary: Vocabulary
    segmentation: SegmentationOutput


class FinalizeOutput(BaseModel):
    report: SegmentationReport


def finalize(state: FinalizeInput, runtime: Runtime[OpenSegContext]) -> FinalizeOutput:
    store = runtime.context.store
    labels = store.get(state.segmentation.labels_key)
    confidence = store.get(state.segmentation.confidence_key)
    num_classes = len(state.vocabulary.classes)
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=num_classes)
    confidence_sums = np.bincount(flat, weights=confidence.ravel().astype(np.float64), minlength=num_classes)
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
    return FinalizeOutput(report=SegmentationReport(classes=summaries, present_classes=present))
