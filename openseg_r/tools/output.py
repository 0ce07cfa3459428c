"""What an agent gets back: a short summary, the overlay, and machine-readable masks."""

from __future__ import annotations

import base64
import io
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from openseg_r._support import rle
from openseg_r._support.render import format_share, label_image
from openseg_r.result import SegmentationResult

MaskFormat = Literal["rle", "png", "none"]
SUMMARY_CLASSES = 12  # the summary names at most this many classes (all are in `classes`)


class RLE(BaseModel):
    """COCO run-length encoding (pycocotools), column-major: ``pycocotools.mask.decode``."""

    size: list[int]  # [height, width]
    counts: str


class ClassFound(BaseModel):
    name: str
    index: int  # the value of this class in the label map
    pixels: int
    area_fraction: float
    mean_confidence: float | None
    reason: str  # one line: why the segmenter was told to look for it this way


MAX_INSTANCES_RETURNED = 50  # what one tool answer carries at most: an agent's context is not a dataset


class InstanceFound(BaseModel):
    class_name: str
    phrase: str = Field(description="the noun phrase that found it")
    score: float
    box: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in pixels")
    mask: RLE


MAX_PANOPTIC_RETURNED = 100


class PanopticSegmentFound(BaseModel):
    id: int = Field(description="1..N, in the order made: instances or regions of things, then stuff")
    class_name: str
    isthing: bool
    area: int
    bbox: tuple[int, int, int, int] = Field(description="x, y, width, height in pixels")
    score: float
    mask: RLE


class SegmentOutput(BaseModel):
    """The structured result of one ``segment`` call."""

    trace_id: str = Field(description="pass to `explain` for the reasoning and self-check steps")
    width: int
    height: int
    summary: str
    classes: list[ClassFound] = Field(description="classes found, largest first")
    label_names: list[str] = Field(description="label map value -> class name (-1 / 255: unknown)")
    masks: dict[str, RLE] | None = Field(None, description="per class found: COCO RLE of its mask")
    label_map_png: str | None = Field(None, description="base64 PNG; pixel value = index into label_names")
    unknown_pixels: int = 0
    notes: list[str] = Field(default_factory=list, description="fallbacks and settings that were changed")
    segmenter: str | None = Field(None, description="the segmenter kind that segmented (openseg-r segmenters)")
    instances: list[InstanceFound] | None = Field(None, description="the objects found, best first, when asked for")
    panoptic: list[PanopticSegmentFound] | None = Field(
        None, description="panoptic segments (things as objects, stuff as regions), largest first, when asked for"
    )


def build_output(
    result: SegmentationResult,
    trace_id: str,
    masks: MaskFormat,
    notes: list[str],
    instances: bool = False,
    panoptic: bool = False,
) -> SegmentOutput:
    height, width = result.labels.shape
    found = [c for c in sorted(result.classes, key=lambda c: -c.pixels) if c.pixels > 0]
    classes = [
        ClassFound(
            name=c.name,
            index=c.index,
            pixels=c.pixels,
            area_fraction=c.area_fraction,
            mean_confidence=c.mean_confidence,
            reason=class_reason(result, c.name),
        )
        for c in found
    ]
    notes = notes + [f"fallback in {f.step}: {f.reason} -> {f.used}" for f in result.state.fallbacks][:10]
    check = result.state.self_check
    if check is not None:
        changed = sum(c.pixels_changed for c in check.changes)
        notes.append(f"self-check: {check.calls_used} LMM call(s), {changed} pixel(s) changed; {check.stopped}")
    output = SegmentOutput(
        trace_id=trace_id,
        width=width,
        height=height,
        summary=summary_text(classes, width, height, trace_id, result),
        classes=classes,
        label_names=result.names,
        unknown_pixels=result.state.report.unknown_pixels if result.state.report else 0,
        notes=notes,
        segmenter=result.segmenter.get("kind"),
    )
    if instances:
        found = result.state.segmentation.instances if result.state.segmentation is not None else None
        if found is None:
            output.notes.append(f"the {output.segmenter} segmenter finds no instances: only the label map is returned")
        else:
            output.instances = [
                InstanceFound(class_name=i.class_name, phrase=i.phrase, score=i.score, box=i.box, mask=i.mask)
                for i in found[:MAX_INSTANCES_RETURNED]
            ]
            if len(found) > MAX_INSTANCES_RETURNED:
                output.notes.append(f"{len(found)} instances found; the best {MAX_INSTANCES_RETURNED} are returned")
    if panoptic:
        found = result.panoptic()
        largest = sorted(found.segments, key=lambda s: -s.area)
        output.panoptic = [
            PanopticSegmentFound(
                id=s.id,
                class_name=s.name,
                isthing=s.isthing,
                area=s.area,
                bbox=s.bbox,
                score=s.score,
                mask=encode_rle(found.ids == s.id),
            )
            for s in largest[:MAX_PANOPTIC_RETURNED]
        ]
        output.notes.extend(found.notes)
        if len(largest) > MAX_PANOPTIC_RETURNED:
            output.notes.append(f"{len(largest)} panoptic segments; the {MAX_PANOPTIC_RETURNED} largest are returned")
    if masks == "rle":
        output.masks = {c.name: encode_rle(result.labels == c.index) for c in classes}
    elif masks == "png":
        output.label_map_png = png_base64(label_image(result.labels, len(result.names)))
    return output


def summary_text(classes: list[ClassFound], width: int, height: int, trace_id: str, result) -> str:
    settings = result.state.settings
    lines = [
        f"Segmented a {width}x{height} image into {len(classes)} class(es) "
        f"(reasoning {'on' if settings.reasoning else 'off'}, "
        f"self-check {'on' if settings.self_check.enabled else 'off'})."
    ]
    for c in classes[:SUMMARY_CLASSES]:
        lines.append(f"- {c.name}: {format_share(c.area_fraction, present=c.pixels > 0)} of the image; {c.reason}")
    if len(classes) > SUMMARY_CLASSES:
        lines.append(f"- ... and {len(classes) - SUMMARY_CLASSES} smaller classes (see `classes`)")
    if result.state.report and result.state.report.unknown_pixels:
        lines.append(
            f"- unknown (none of the classes, per the self-check): {result.state.report.unknown_pixels} pixels"
        )
    lines.append(f"Trace id: {trace_id} (call `explain` with it to see the reasoning steps).")
    return "\n".join(lines)


def class_reason(result: SegmentationResult, name: str) -> str:
    """One line: the image-specific attributes, else the generic reasoning, else the bare name."""
    state = result.state
    if state.alignment and state.alignment.image_attributes.get(name):
        return "seen in this image as: " + ", ".join(state.alignment.image_attributes[name][:4])
    generic = (state.generic_reasoning or {}).get(name)
    if generic and (generic.attributes or generic.general_category):
        path = " > ".join(part for part in (generic.general_category, generic.sub_category) if part)
        attributes = ", ".join(generic.attributes[:4])
        return f"{path}: {attributes}" if path and attributes else (path or attributes)
    return "matched by its name alone (no reasoning)"


def encode_rle(mask: np.ndarray) -> RLE:
    return RLE(**rle.encode_rle(mask))


def coco_masks(result: SegmentationResult, file_name: str = "image") -> dict:
    """The classes found as a COCO file (``pycocotools.coco.COCO`` reads it): one image, the
    vocabulary as categories (id = label value + 1, since COCO ids start at 1), and one
    annotation per class found, its mask as RLE and its mean confidence as ``score``."""
    height, width = result.labels.shape
    found = [c for c in sorted(result.classes, key=lambda c: -c.pixels) if c.pixels > 0]
    annotations = []
    for number, summary in enumerate(found, start=1):
        mask = result.labels == summary.index
        ys, xs = np.nonzero(mask)
        annotations.append(
            {
                "id": number,
                "image_id": 1,
                "category_id": summary.index + 1,
                "iscrowd": 0,
                "segmentation": encode_rle(mask).model_dump(),
                "area": int(summary.pixels),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "score": summary.mean_confidence,
            }
        )
    return {
        "info": {"description": "openseg-r segmentation", "run_id": result.run_id},
        "images": [{"id": 1, "file_name": file_name, "width": int(width), "height": int(height)}],
        "categories": [{"id": index + 1, "name": name} for index, name in enumerate(result.names)],
        "annotations": annotations,
    }


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def overlay_png_base64(result: SegmentationResult, max_side: int = 1024) -> str:
    """The overlay with its legend, downscaled so an agent's context is not flooded."""
    overlay = result.overlay()
    scale = min(1.0, max_side / max(overlay.size))
    if scale < 1:
        overlay = overlay.resize((max(1, round(overlay.width * scale)), max(1, round(overlay.height * scale))))
    return png_base64(overlay)
