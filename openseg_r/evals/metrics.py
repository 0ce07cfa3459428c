"""Segmentation metrics the way the field computes them (mmsegmentation's convention).

Per class, accumulated over the whole dataset: the intersection, the union, the
predicted area and the labelled area. Pixels whose label is the ignore index are
left out. Then:

- IoU = intersection / union, per class;
- mIoU = the mean IoU over the classes whose union is not 0;
- fwIoU = the sum of IoU weighted by each class's share of the labelled pixels;
- aAcc (pixel accuracy) = all intersections / all labelled pixels;
- mAcc = the mean of intersection / labelled area over the classes that are labelled.

Accumulation streams: four vectors of the number of classes, whatever the number of
images, and two accumulators add up exactly (integers), so shards merge exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AreaCounts:
    """The four per-class pixel counts of one image, or of many added together."""

    intersect: np.ndarray
    union: np.ndarray
    pred: np.ndarray
    label: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> "AreaCounts":
        return cls(*(np.zeros(num_classes, np.int64) for _ in range(4)))

    def __add__(self, other: "AreaCounts") -> "AreaCounts":
        return AreaCounts(
            self.intersect + other.intersect, self.union + other.union, self.pred + other.pred, self.label + other.label
        )

    def to_sparse(self) -> dict:
        """Only the non-zero entries: {"i": [...], "intersect": [...], ...}."""
        index = np.flatnonzero(self.union | self.pred | self.label)
        return {
            "i": index.tolist(),
            "intersect": self.intersect[index].tolist(),
            "union": self.union[index].tolist(),
            "pred": self.pred[index].tolist(),
            "label": self.label[index].tolist(),
        }

    @classmethod
    def from_sparse(cls, data: dict, num_classes: int) -> "AreaCounts":
        counts = cls.zeros(num_classes)
        index = np.asarray(data["i"], np.int64)
        for name in ("intersect", "union", "pred", "label"):
            getattr(counts, name)[index] = np.asarray(data[name], np.int64)
        return counts


def image_counts(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255) -> AreaCounts:
    """Per-class counts for one prediction. A predicted value outside the classes (the
    self-check's unknown, -1) counts as wrong wherever the pixel is labelled."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in size")
    valid = label != ignore_index
    label_values = label[valid].astype(np.int64)
    if label_values.size and (label_values.min() < 0 or label_values.max() >= num_classes):
        bad = label_values[(label_values < 0) | (label_values >= num_classes)][0]
        raise ValueError(
            f"label value {bad} is outside 0..{num_classes - 1} and is not the ignore index {ignore_index}"
        )
    pred_values = pred[valid].astype(np.int64)
    known = (pred_values >= 0) & (pred_values < num_classes)
    hit = known & (pred_values == label_values)
    intersect = np.bincount(label_values[hit], minlength=num_classes)
    area_pred = np.bincount(pred_values[known], minlength=num_classes)
    area_label = np.bincount(label_values, minlength=num_classes)
    return AreaCounts(intersect, area_pred + area_label - intersect, area_pred, area_label)


def summarize(counts: AreaCounts, class_names: list[str] | None = None) -> dict:
    """mIoU, fwIoU, aAcc, mAcc (percent) and per-class IoU and accuracy (None where undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(counts.union > 0, counts.intersect / np.maximum(counts.union, 1), np.nan)
        acc = np.where(counts.label > 0, counts.intersect / np.maximum(counts.label, 1), np.nan)
    total_label = counts.label.sum()
    present = counts.union > 0
    frequency = counts.label / total_label if total_label else np.zeros_like(iou)
    names = class_names or [str(i) for i in range(len(iou))]
    return {
        "mIoU": _percent(np.nanmean(iou) if present.any() else np.nan),
        "fwIoU": _percent(np.nansum(frequency[present] * iou[present]) if total_label else np.nan),
        "aAcc": _percent(counts.intersect.sum() / total_label if total_label else np.nan),
        "mAcc": _percent(np.nanmean(acc) if (counts.label > 0).any() else np.nan),
        "classes_evaluated": int(present.sum()),
        "per_class": {name: {"IoU": _percent(i), "Acc": _percent(a)} for name, i, a in zip(names, iou, acc)},
    }


def _percent(value) -> float | None:
    return None if value is None or np.isnan(value) else round(100.0 * float(value), 4)


def reduce_zero_label(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """ADE20K-150 (and VOC20, PC59): 0 becomes ignore, every other label shifts down by 1."""
    out = label.astype(np.int64) - 1
    out[label == 0] = ignore_index
    out[label == ignore_index] = ignore_index
    return out
