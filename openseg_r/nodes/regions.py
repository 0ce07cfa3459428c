"""Array work of the self-check: find ambiguous regions, cut a marked crop, apply an answer.

Pure functions on numpy arrays, so that each can be tested on a hand-made label
map. The nodes in :mod:`openseg_r.nodes.self_check` move their inputs and outputs
through the artifact store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from openseg_r.config.settings import SelfCheckSettings
from openseg_r.schemas import UNKNOWN_LABEL, Box
from openseg_r.segmenters.base import SegmentationArrays

OUTLINE_COLOUR = (255, 0, 255)  # magenta: rare in photos, so the marked region stands out
OUTSIDE_DIM = 0.55  # pixels outside the region are darkened to this fraction
CROP_MAX_SIDE = 448
CROP_MIN_SIDE = 224  # small crops are enlarged so a vision encoder sees more than a few patches
CONTEXT_MAX_SIDE = 768
EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass
class FoundRegion:
    box: Box
    mask: np.ndarray  # bool, the box's shape
    area: int
    mean_margin: float
    score: float
    at_border: bool
    competing: list[tuple[int, float, float]]  # (class index, mean probability, top-1 share)


MAX_PAIRS = 64  # the most class pairs examined per round (the largest first)


def locate_ambiguous_regions(
    arrays: SegmentationArrays, settings: SelfCheckSettings, asked: np.ndarray | None = None
) -> list[FoundRegion]:
    """Regions where two classes compete: 8-connected pixels whose top two classes are
    the same pair and whose top-2 margin is under the threshold, of at least the
    minimum area; best first by area x (1 - mean margin).

    Grouping by pair keeps a question precise ("sofa or armchair?") where one
    connected blob of doubt may mix several contests. Pixels in ``asked`` were
    already asked about and are never part of a new region.
    """
    labels, runner_up = arrays.labels, arrays.runner_up
    height, width = labels.shape
    ambiguous = (arrays.margin < settings.margin_threshold) & (runner_up >= 0) & (runner_up != labels)
    ambiguous &= labels != UNKNOWN_LABEL
    if asked is not None:
        ambiguous &= ~asked
    min_area = max(settings.min_area_pixels, int(np.ceil(settings.min_area_fraction * height * width)))
    where = np.flatnonzero(ambiguous)
    if where.size < min_area:
        return []
    first, second = labels.ravel()[where].astype(np.int64), runner_up.ravel()[where].astype(np.int64)
    stride = int(max(first.max(), second.max())) + 1
    pair_ids = np.minimum(first, second) * stride + np.maximum(first, second)
    pairs, counts = np.unique(pair_ids, return_counts=True)
    large = [int(p) for p, _ in sorted(zip(pairs, counts), key=lambda pc: -pc[1]) if _ >= min_area][:MAX_PAIRS]
    found: list[FoundRegion] = []
    for pair in large:
        pair_mask = np.zeros(height * width, bool)
        pair_mask[where[pair_ids == pair]] = True
        pair_mask = pair_mask.reshape(height, width)
        components, _ = ndimage.label(pair_mask, structure=EIGHT_CONNECTED)
        for index, slices in enumerate(ndimage.find_objects(components), start=1):
            if slices is None:
                continue
            mask = components[slices] == index
            area = int(mask.sum())
            if area < min_area:
                continue
            rows, cols = slices
            box = (cols.start, rows.start, cols.stop, rows.stop)
            mean_margin = float(arrays.margin[slices][mask].mean())
            found.append(
                FoundRegion(
                    box=box,
                    mask=mask,
                    area=area,
                    mean_margin=mean_margin,
                    score=area * (1.0 - mean_margin),
                    at_border=box[0] == 0 or box[1] == 0 or box[2] == width or box[3] == height,
                    competing=_evidence(arrays, slices, mask, (pair // stride, pair % stride)),
                )
            )
    found.sort(key=lambda region: (-region.score, region.box))
    return found


def _evidence(arrays: SegmentationArrays, slices, mask, pair: tuple[int, int]):
    """(class, mean probability, top-1 share) of the two competing classes, most probable first."""
    top1 = arrays.labels[slices][mask]
    top2 = arrays.runner_up[slices][mask]
    p1 = arrays.confidence[slices][mask].astype(np.float64)
    p2 = arrays.runner_up_confidence[slices][mask].astype(np.float64)
    evidence = []
    for cls in pair:
        is1, is2 = top1 == cls, top2 == cls
        evidence.append((int(cls), float((p1 * is1 + p2 * is2).sum() / top1.size), float(is1.sum() / top1.size)))
    evidence.sort(key=lambda item: (-item[1], item[0]))
    return evidence


def full_mask(shape: tuple[int, int], box: Box, box_mask: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = box_mask
    return mask


# --------------------------------------------------------------------------- crops


def crop_box(box: Box, image_width: int, image_height: int, context: float, min_side: int) -> Box:
    """The region's box grown by ``context`` on each side and to at least ``min_side``,
    shifted back inside the image at a border (and never larger than the image)."""
    x0, x1 = _span(box[0], box[2], image_width, context, min_side)
    y0, y1 = _span(box[1], box[3], image_height, context, min_side)
    return x0, y0, x1, y1


def _span(start: int, stop: int, limit: int, context: float, min_side: int) -> tuple[int, int]:
    size = stop - start
    pad = int(round(context * size))
    start, stop = start - pad, stop + pad
    if stop - start < min_side:
        grow = min_side - (stop - start)
        start, stop = start - grow // 2, stop + grow - grow // 2
    if stop - start >= limit:
        return 0, limit
    if start < 0:
        start, stop = 0, stop - start
    if stop > limit:
        start, stop = start - (stop - limit), limit
    return start, stop


def marked_crop(rgb: np.ndarray, region_mask: np.ndarray, crop: Box) -> np.ndarray:
    """The crop with the region outlined in magenta and the rest slightly darkened,
    resized so its long side is between CROP_MIN_SIDE and CROP_MAX_SIDE."""
    x0, y0, x1, y1 = crop
    pixels = rgb[y0:y1, x0:x1].astype(np.float32)
    inside = region_mask[y0:y1, x0:x1]
    pixels[~inside] *= OUTSIDE_DIM
    thickness = max(1, round(max(pixels.shape[:2]) / 150))
    outline = inside & ~ndimage.binary_erosion(inside, structure=EIGHT_CONNECTED, iterations=thickness, border_value=0)
    pixels[outline] = OUTLINE_COLOUR
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    long_side = max(image.size)
    target = min(max(long_side, CROP_MIN_SIDE), CROP_MAX_SIDE)
    if target != long_side:
        scale = target / long_side
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
        image = image.resize(size, resample)
    return np.asarray(image)


def context_image(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The whole image, downscaled, with the region's box drawn: where the crop comes from."""
    image = Image.fromarray(rgb)
    scale = min(1.0, CONTEXT_MAX_SIDE / max(image.size))
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=OUTLINE_COLOUR, width=max(2, round(3 * scale)))
    return np.asarray(image)


# --------------------------------------------------------------------------- decisions


def relabel(arrays: SegmentationArrays, mask: np.ndarray, cls: int) -> np.ndarray:
    """Every region pixel becomes ``cls``. Returns the pixels that changed.

    ``confidence`` becomes the segmenter's probability of ``cls`` where it was in a
    pixel's top two, and 0 where it was not (its probability there is not kept).
    """
    changed = mask & (arrays.labels != cls)
    known1 = changed & (arrays.labels == cls)
    known2 = changed & (arrays.runner_up == cls)
    new_confidence = np.where(known2, arrays.runner_up_confidence, np.where(known1, arrays.confidence, 0.0))
    arrays.confidence[changed] = new_confidence[changed]
    arrays.labels[changed] = cls
    return changed


def reweight(arrays: SegmentationArrays, mask: np.ndarray, cls: int, factor: float) -> np.ndarray:
    """Inside the region, multiply ``cls``'s probability by ``factor`` and re-pick the
    label among each pixel's top two. Pixels where ``cls`` is not in the top two keep
    their label. Returns the pixels that changed."""
    challenger = mask & (arrays.runner_up == cls) & (arrays.labels != cls) & (arrays.labels != UNKNOWN_LABEL)
    changed = challenger & (arrays.runner_up_confidence * factor > arrays.confidence)
    arrays.confidence[changed] = arrays.runner_up_confidence[changed]
    arrays.labels[changed] = cls
    return changed


def mark_unknown(arrays: SegmentationArrays, mask: np.ndarray) -> np.ndarray:
    changed = mask & (arrays.labels != UNKNOWN_LABEL)
    arrays.labels[changed] = UNKNOWN_LABEL
    arrays.confidence[changed] = 0.0
    return changed
