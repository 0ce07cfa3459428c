"""The COCO panoptic format: a PNG whose colour is the segment id (id = R + 256·G +
256²·B; 0 is void) and, per image, ``segments_info`` (id, category_id, isthing, area,
bbox as x, y, width, height, score)."""

from __future__ import annotations

import numpy as np

from openseg_r.panoptic.build import Panoptic

MAX_SEGMENT_ID = 256**3 - 1


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 colours."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"panoptic segment ids must be 0..{MAX_SEGMENT_ID}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours of a panoptic PNG -> (H, W) int64 segment ids."""
    rgb = np.asarray(rgb).astype(np.int64)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError("a panoptic PNG is an RGB image")
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def segments_info(panoptic: Panoptic) -> list[dict]:
    return [
        {
            "id": s.id,
            "category_id": s.category_id,
            "category_name": s.name,
            "isthing": int(s.isthing),
            "area": s.area,
            "bbox": list(s.bbox),
            "score": s.score,
        }
        for s in panoptic.segments
    ]


def panoptic_json(
    panoptic: Panoptic, names: list[str], kinds: list[str | None], file_name: str, background_index: int | None = None
) -> dict:
    """One image's record in the COCO panoptic results format, with the categories (the
    vocabulary's classes: id = index; the background class is void, not a category) and
    how the segments were made."""
    return {
        "file_name": file_name,
        "segments_info": segments_info(panoptic),
        "categories": [
            {
                "id": i,
                "name": name,
                "isthing": int((kind or "thing") == "thing"),
                "kind_from": panoptic.kind_from[i] if panoptic.kind_from else ("vocabulary" if kind else "default"),
            }
            for i, (name, kind) in enumerate(zip(names, kinds))
            if i != background_index
        ],
        "things_from": panoptic.things_from,
        "min_area": panoptic.min_area,
        "notes": panoptic.notes,
    }
