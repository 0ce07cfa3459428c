"""Things and stuff from what a segmenter gives.

- A *stuff* class becomes one segment: every pixel the label map gives it.
- A *thing* class becomes one segment per object. From a segmenter that finds instances
  (SAM 3), each instance of a thing class, best score first, takes the pixels of its mask
  that no better instance took, and stuff fills what the instances leave; pixels the label
  map gives a thing class but no instance covers are void. From a label map only (dense
  CLIP, ProxyCLIP), each connected region of a thing class (8-connected) is one object: a
  baseline, not a trained instance model; touching objects of one class merge.
- A segment smaller than ``min_area`` pixels is dropped (its pixels become void), as are the
  background class and unknown pixels: void is segment id 0.
- A class whose kind is not known counts as ``default_kind`` (a thing), and the notes say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_MIN_AREA = 64


@dataclass(frozen=True)
class PanopticSegment:
    id: int  # 1..N; 0 is void
    category_id: int  # the class's index in the vocabulary
    name: str
    isthing: bool
    area: int
    bbox: tuple[int, int, int, int]  # x, y, width, height
    score: float  # the instance's score, or the mean confidence of a region


@dataclass
class Panoptic:
    """Segment ids per pixel (int32, 0 = void) and the segments, largest id last."""

    ids: np.ndarray
    segments: list[PanopticSegment]
    min_area: int
    things_from: str  # "instances" or "connected regions"
    notes: list[str] = field(default_factory=list)
    kind_from: list[str] | None = None  # per class: "vocabulary", "reasoning" or "default" (when known)


def build_panoptic(
    labels: np.ndarray,
    confidence: np.ndarray,
    names: list[str],
    kinds: list[str | None],
    *,
    background_index: int | None = None,
    instances: list[tuple[int, float, np.ndarray]] | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    default_kind: str = "thing",
    kind_from: list[str] | None = None,
) -> Panoptic:
    """``labels`` (H, W) class indices (negative: unknown); ``kinds[c]`` "thing", "stuff" or
    None; ``instances`` (class index, score, bool mask) from a segmenter that finds them, or
    None to split thing classes into connected regions; ``kind_from[c]`` where class c's kind
    came from ("vocabulary", "reasoning" or "default"), when known."""
    if min_area < 1:
        raise ValueError("min_area must be at least 1 pixel")
    resolved = [kind or default_kind for kind in kinds]
    notes = []
    decided = [name for name, source in zip(names, kind_from or []) if source == "reasoning"]
    if decided:
        shown = ", ".join(decided[:5]) + (", ..." if len(decided) > 5 else "")
        notes.append(f"generic reasoning decided thing or stuff for {len(decided)} class(es): {shown}")
    unmarked = [name for i, (name, kind) in enumerate(zip(names, kinds)) if kind is None and i != background_index]
    if unmarked:
        shown = ", ".join(unmarked[:5]) + (", ..." if len(unmarked) > 5 else "")
        notes.append(f"{len(unmarked)} class(es) not marked thing or stuff count as {default_kind}s: {shown}")
    ids = np.zeros(labels.shape, np.int32)
    segments: list[PanopticSegment] = []

    def add(mask: np.ndarray, category: int, score: float) -> None:
        area = int(mask.sum())
        if area < min_area:
            return
        ys, xs = np.nonzero(mask)
        segment_id = len(segments) + 1
        ids[mask] = segment_id
        box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        segments.append(
            PanopticSegment(
                segment_id, category, names[category], resolved[category] == "thing", area, box, round(float(score), 4)
            )
        )

    present = [int(c) for c in np.unique(labels) if 0 <= c < len(names) and c != background_index]
    if instances is not None:  # things first, best first; stuff then fills what they leave
        for category, score, mask in sorted(instances, key=lambda found: -found[1]):
            if 0 <= category < len(names) and category != background_index and resolved[category] == "thing":
                add(mask & (ids == 0), category, score)
        things_from = "instances"
    else:
        from scipy import ndimage

        eight = np.ones((3, 3), bool)
        for category in present:
            if resolved[category] == "thing":
                regions, count = ndimage.label(labels == category, structure=eight)
                for region in range(1, count + 1):
                    mask = regions == region
                    add(mask, category, float(confidence[mask].mean()))
        things_from = "connected regions"
    for category in present:
        if resolved[category] == "stuff":
            mask = (labels == category) & (ids == 0)
            if mask.any():
                add(mask, category, float(confidence[mask].mean()))
    return Panoptic(ids, segments, min_area, things_from, notes, kind_from)
