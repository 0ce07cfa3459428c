"""COCO run-length encoding of masks (pycocotools), as JSON carries it: ``counts`` as text."""

from __future__ import annotations

import numpy as np


def encode_rle(mask: np.ndarray) -> dict:
    """COCO run-length encoding (``{"size": [h, w], "counts": str}``), as pycocotools writes it."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    from pycocotools import mask as coco_mask

    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
