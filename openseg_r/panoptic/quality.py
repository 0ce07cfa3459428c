"""Panoptic quality (Kirillov et al., CVPR 2019), computed as COCO's panopticapi computes it
(``pq_compute_single_core``):

- a predicted and a ground-truth segment of the same category match when their IoU is
  above 0.5, where the union leaves out the prediction's pixels on void ground truth;
  crowd segments are never matched;
- an unmatched ground-truth segment is a false negative unless it is a crowd region;
- an unmatched prediction is a false positive unless more than half of it lies on void or
  on a crowd region of its own category;
- per category, PQ = Σ IoU / (TP + FP/2 + FN/2), SQ = Σ IoU / TP, RQ = TP / (TP + FP/2 + FN/2);
  PQ, SQ and RQ are their means over the categories that occur (TP + FP + FN > 0), over
  all, things and stuff.

Totals are sums per category, so images, shards and resumed runs add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VOID = 0
OFFSET = 256 * 256 * 256


@dataclass
class CategoryCounts:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: "CategoryCounts") -> None:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn


@dataclass
class PQTotals:
    """Per-category counts: what one image, a shard or a whole run adds up to."""

    per_category: dict[int, CategoryCounts] = field(default_factory=dict)

    def count(self, category: int) -> CategoryCounts:
        return self.per_category.setdefault(category, CategoryCounts())

    def add(self, other: "PQTotals") -> None:
        for category, counts in other.per_category.items():
            self.count(category).add(counts)

    def to_json(self) -> dict:
        return {str(c): [n.iou, n.tp, n.fp, n.fn] for c, n in sorted(self.per_category.items())}

    @classmethod
    def from_json(cls, data: dict) -> "PQTotals":
        return cls({int(c): CategoryCounts(float(v[0]), int(v[1]), int(v[2]), int(v[3])) for c, v in data.items()})

    def summary(self, isthing: dict[int, bool]) -> dict:
        """PQ, SQ, RQ (in 0..1) and the number of categories, for all, things and stuff."""
        out = {}
        for group, keep in (("all", None), ("things", True), ("stuff", False)):
            pq = sq = rq = 0.0
            n = 0
            for category, c in self.per_category.items():
                if keep is not None and isthing.get(category, True) != keep:
                    continue
                if c.tp + c.fp + c.fn == 0:
                    continue
                n += 1
                denominator = c.tp + 0.5 * c.fp + 0.5 * c.fn
                pq += c.iou / denominator
                sq += c.iou / c.tp if c.tp else 0.0
                rq += c.tp / denominator
            out[group] = {"PQ": pq / n if n else 0.0, "SQ": sq / n if n else 0.0, "RQ": rq / n if n else 0.0, "n": n}
        return out


def image_pq(
    gt_ids: np.ndarray, gt_segments: dict[int, dict], pred_ids: np.ndarray, pred_segments: dict[int, dict]
) -> PQTotals:
    """One image. ``*_ids`` (H, W) segment ids (0: void); ``*_segments`` id -> {"category_id",
    and for the ground truth "iscrowd"}. Ground-truth ids without a segment count as void."""
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"the prediction is {pred_ids.shape[::-1]}, the ground truth {gt_ids.shape[::-1]}")
    gt = np.where(np.isin(gt_ids, list(gt_segments)), gt_ids, VOID).astype(np.int64)
    pred = np.where(np.isin(pred_ids, list(pred_segments)), pred_ids, VOID).astype(np.int64)
    joint, counts = np.unique(gt * OFFSET + pred, return_counts=True)
    overlap = {(int(j // OFFSET), int(j % OFFSET)): int(n) for j, n in zip(joint, counts)}
    gt_area = dict.fromkeys(gt_segments, 0)  # each segment's area, from the one pass above
    pred_area = dict.fromkeys(pred_segments, 0)
    for (g, p), inter in overlap.items():
        if g != VOID:
            gt_area[g] += inter
        if p != VOID:
            pred_area[p] += inter
    totals = PQTotals()
    gt_matched, pred_matched = set(), set()
    for (g, p), inter in overlap.items():
        if g == VOID or p == VOID or gt_segments[g].get("iscrowd", 0) == 1:
            continue
        if gt_segments[g]["category_id"] != pred_segments[p]["category_id"]:
            continue
        union = pred_area[p] + gt_area[g] - inter - overlap.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            counts_ = totals.count(gt_segments[g]["category_id"])
            counts_.tp += 1
            counts_.iou += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_segments.items():
        if g in gt_matched or gt_area[g] == 0:
            continue
        if info.get("iscrowd", 0) == 1:
            crowd[info["category_id"]] = g
            continue
        totals.count(info["category_id"]).fn += 1
    for p, info in pred_segments.items():
        if p in pred_matched or pred_area[p] == 0:
            continue
        ignored = overlap.get((VOID, p), 0)
        if info["category_id"] in crowd:
            ignored += overlap.get((crowd[info["category_id"]], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        totals.count(info["category_id"]).fp += 1
    return totals
