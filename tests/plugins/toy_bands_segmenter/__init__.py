"""A third-party segmenter as a plugin distribution would ship one (tests only).

It scores each pixel by its brightness: class ``i`` of ``N`` owns the band around
``(i + 0.5) / N``, sharper with ``sharpness``. It needs no weights, so the tests show
the registry's plugin path (entry point, options, factory, recording, replay) end to end.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from openseg_r.segmenters.base import BuildRequest, ClassFilter, SegmentationArrays, SegmenterKind


class ToyBandsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sharpness: float = Field(8.0, gt=0, description="how sharply a band's score falls off")
    invert: bool = Field(False, description="score darkness instead of brightness")


class ToyBandsSegmenter:
    def __init__(self, options: ToyBandsOptions, request: BuildRequest) -> None:
        self.options, self.request = options, request

    def query_bank(self, prompts) -> int:
        return len(prompts.classes)

    def segment(
        self,
        rgb,
        bank,
        *,
        class_filter: ClassFilter | None = None,
        logit_scale: float = 40.0,
        background_index: int | None = None,
        background_threshold: float = 0.0,
        image_key: str | None = None,
    ) -> SegmentationArrays:
        classes = int(bank)
        level = rgb.astype(np.float32).mean(axis=2) / 255.0
        if self.options.invert:
            level = 1.0 - level
        centres = (np.arange(classes, dtype=np.float32) + 0.5) / classes
        scores = -self.options.sharpness * np.abs(level[None] - centres[:, None, None])
        suppressed = (class_filter or ClassFilter()).suppressed(classes)
        scores[suppressed] = -np.inf
        scores -= scores.max(axis=0, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=0, keepdims=True)
        order = np.argsort(-probs, axis=0, kind="stable")
        top, second = order[0], order[1] if classes > 1 else np.full_like(order[0], -1)
        confidence = np.take_along_axis(probs, top[None], 0)[0]
        runner = (
            np.take_along_axis(probs, np.maximum(second, 0)[None], 0)[0] if classes > 1 else np.zeros_like(confidence)
        )
        labels = top.astype(np.int32)
        background = 0
        if background_index is not None:
            low = confidence < background_threshold
            labels[low] = background_index
            background = int(low.sum())
        return SegmentationArrays(
            labels=labels,
            confidence=confidence.astype(np.float32),
            runner_up=second.astype(np.int32),
            margin=(confidence - runner).astype(np.float32),
            runner_up_confidence=runner.astype(np.float32),
            suppressed=suppressed,
            background_pixels=background,
        )

    def describe(self) -> dict:
        return {"kind": KIND.name, **self.options.model_dump(), "device": self.request.device or "cpu"}


def build(options: ToyBandsOptions, request: BuildRequest) -> ToyBandsSegmenter:
    return ToyBandsSegmenter(options, request)


KIND = SegmenterKind(
    name="toy-bands",
    summary="brightness bands (a test plugin)",
    options=ToyBandsOptions,
    build="toy_bands_segmenter:build",
)
