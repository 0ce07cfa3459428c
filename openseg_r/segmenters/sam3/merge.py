"""From SAM 3's instances to a label map: the semantic rule.

An instance is one query of one phrase whose score, ``sigmoid(query logit) x
sigmoid(presence logit)``, is above ``instance_threshold``; its mask is its mask logits
resized bilinearly to the image and passed through a sigmoid, above ``mask_threshold``.
These are SAM 3's own post-processing steps (``Sam3Processor.post_process_instance_
segmentation``), and a test holds the two together.

Each pixel takes the class of the highest-scoring instance that covers it (its
*confidence* is that score); the runner-up is the best instance of another class covering
it, and the margin is the difference of the two scores (the whole score where no other
class covers it). The self-check's ambiguous regions are therefore overlapping masks of
different classes with close scores, and low-scoring lone masks. A pixel no instance
covers goes to SAM 3's semantic head: the class whose phrases' semantic map (times their
presence) is highest there takes it, when above ``semantic_threshold`` (1 turns this off).
A pixel still without a class is background when the vocabulary has a background class,
and unknown (the label-map value for "none of these") when it has none; so is a pixel
whose best score is under ``background_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from openseg_r._support.rle import encode_rle
from openseg_r.schemas import UNKNOWN_LABEL
from openseg_r.segmenters.base import Instance, SegmentationArrays


@dataclass
class Found:
    """Instances of one image, best first: their phrase, class, score, box (0..1, xyxy) and mask logits."""

    phrases: list[int]
    classes: list[int]
    scores: torch.Tensor  # (N,) float32
    boxes: torch.Tensor  # (N, 4) normalised xyxy
    mask_logits: torch.Tensor  # (N, h, w)


def instance_masks(mask_logits: torch.Tensor, size: tuple[int, int], mask_threshold: float) -> torch.Tensor:
    """(N, h, w) logits -> (N, H, W) bool at the image's size, as SAM 3's post-processing does."""
    if mask_logits.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    probs = mask_logits.float().sigmoid()
    resized = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return resized > mask_threshold


def merge(
    found: Found,
    size: tuple[int, int],
    phrases: tuple[str, ...],
    *,
    mask_threshold: float,
    background_index: int | None,
    background_threshold: float,
    suppressed: list[int],
    asked: list[tuple[int, str]] | None = None,
    semantic: tuple[list[int], torch.Tensor] | None = None,
    semantic_threshold: float = 1.0,
) -> SegmentationArrays:
    """The label map, its top two classes and margin, and the instances (masks as COCO RLE)."""
    height, width = size
    best_class = np.full(size, -1, np.int32)
    best_score = np.zeros(size, np.float32)
    second_class = np.full(size, -1, np.int32)
    second_score = np.zeros(size, np.float32)
    instances: list[Instance] = []
    masks = instance_masks(found.mask_logits, size, mask_threshold).numpy()
    scale = np.array([width, height, width, height], np.float32)
    for k in range(len(found.classes)):  # best first: the first instance to reach a pixel owns it
        cls, score, mask = found.classes[k], float(found.scores[k]), masks[k]
        free = mask & (best_class < 0)
        best_class[free], best_score[free] = cls, score
        other = mask & (best_class >= 0) & (best_class != cls) & (second_class < 0)
        second_class[other], second_score[other] = cls, score
        box = (found.boxes[k].float().numpy() * scale).clip(0, scale)
        instances.append(
            Instance(
                class_index=cls,
                phrase=phrases[found.phrases[k]],
                score=score,
                box=tuple(round(float(v), 2) for v in box),
                mask=encode_rle(mask),
            )
        )
    if semantic is not None and semantic_threshold < 1.0:
        _fill_from_semantic(semantic, size, semantic_threshold, best_class, best_score, second_class, second_score)
    labels = best_class.copy()
    empty = (best_class < 0) | (best_score < background_threshold)
    labels[empty] = background_index if background_index is not None else UNKNOWN_LABEL
    return SegmentationArrays(
        labels=labels,
        confidence=best_score,
        runner_up=second_class,
        margin=best_score - second_score,
        runner_up_confidence=second_score,
        suppressed=list(suppressed),
        background_pixels=int(empty.sum()) if background_index is not None else 0,
        instances=instances,
        phrases=asked,
    )


def _fill_from_semantic(semantic, size, threshold, best_class, best_score, second_class, second_score) -> None:
    """Where no instance reaches a pixel, SAM 3's semantic head decides: each class's map is the
    highest of its phrases' ``sigmoid(semantic logit) x sigmoid(presence)``, resized to the
    image; the best class above ``threshold`` takes the pixel, the next is its runner-up.
    Stuff (sky, road, grass) is found this way; objects stay with their instances."""
    classes, maps = semantic
    if not classes:
        return
    resized = F.interpolate(maps.float()[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
    order = np.argsort(-resized, axis=0, kind="stable")
    top = np.take_along_axis(resized, order[:1], 0)[0]
    uncovered = (best_class < 0) & (top > threshold)
    ids = np.asarray(classes, np.int32)
    best_class[uncovered] = ids[order[0]][uncovered]
    best_score[uncovered] = top[uncovered]
    if len(classes) > 1:
        runner = np.take_along_axis(resized, order[1:2], 0)[0]
        second_class[uncovered] = ids[order[1]][uncovered]
        second_score[uncovered] = runner[uncovered]
