"""Instance evaluation: mask AP with pycocotools' ``COCOeval`` on a COCO-format instance
dataset (a folder of images and an instances JSON), for segmenters that find instances.

The vocabulary is the dataset's categories, in id order; each image is segmented as
``segment`` would, and its instances (``SegmentationResult.coco_instances``) become the
detections, their category the class's category id. The summary holds COCOeval's twelve
mask-AP numbers (AP, AP50, AP75, AP small/medium/large, AR at 1/10/100, AR by size).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from openseg_r._support.files import write_atomically
from openseg_r.errors import ConfigError

INSTANCE_DATASET = "coco-instances"
ANNOTATION_CANDIDATES = ("annotations/instances_val2017.json", "annotations/instances.json", "instances.json")
IMAGE_FOLDERS = ("val2017", "images", ".")
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR_1",
    "AR_10",
    "AR_100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def annotations_file(root: str | Path, annotations: str | Path | None = None) -> Path:
    """The instances JSON: ``annotations``, else the first of :data:`ANNOTATION_CANDIDATES` under ``root``."""
    root = Path(root)
    if annotations is not None:
        path = Path(annotations)
        if not path.is_file():
            raise ConfigError(f"instance annotations not found: {path}")
        return path
    for candidate in ANNOTATION_CANDIDATES:
        if (root / candidate).is_file():
            return root / candidate
    raise ConfigError(
        f"no instances JSON under {root} (looked for {', '.join(ANNOTATION_CANDIDATES)}); give --annotations FILE"
    )


def _ground_truth(path: Path):
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            return COCO(str(path))
    except Exception as exc:  # noqa: BLE001 (a bad file is a bad file, whatever pycocotools raises)
        raise ConfigError(f"{path} is not a COCO instances file ({type(exc).__name__}: {str(exc)[:120]})") from None


def _image_path(root: Path, file_name: str) -> Path:
    for folder in IMAGE_FOLDERS:
        if (root / folder / file_name).is_file():
            return root / folder / file_name
    raise ConfigError(f"image {file_name} of the instances file is not under {root} ({', '.join(IMAGE_FOLDERS)})")


def run_instance_eval(
    model,
    root: str | Path,
    out: str | Path,
    *,
    annotations: str | Path | None = None,
    limit: int | None = None,
    **settings,
) -> dict:
    """Segment every image of the dataset (the first ``limit``), score the instances with
    COCOeval (``segm``), write ``summary.json``, ``summary.md`` and ``detections.json`` to
    ``out``, and return the summary."""
    from pycocotools.cocoeval import COCOeval

    if not getattr(model.options.kind, "instances", False):
        raise ConfigError(
            f"instance evaluation needs a segmenter that finds instances (sam3); the "
            f"{model.options.segmenter} segmenter gives a label map only"
        )
    root, out = Path(root), Path(out)
    path = annotations_file(root, annotations)
    truth = _ground_truth(path)
    categories = sorted(truth.getCatIds())
    if not categories:
        raise ConfigError(f"{path} has no categories")
    names = [truth.cats[c]["name"] for c in categories]
    image_ids = sorted(truth.getImgIds())[: limit if limit else None]
    images = [_image_path(root, truth.imgs[i]["file_name"]) for i in image_ids]  # all checked before any runs
    detections = []
    for image_id, image in zip(image_ids, images):
        result = model.segment(str(image), names, **settings)
        for found in result.coco_instances(image_id):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": categories[found["category_id"]],
                    "segmentation": found["segmentation"],
                    "score": found["score"],
                    "bbox": found["bbox"],
                }
            )
    stats = [0.0] * len(STAT_NAMES)
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(truth, truth.loadRes(detections), "segm")
            evaluation.params.imgIds = image_ids
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = [round(float(v), 6) for v in evaluation.stats]
    summary = {
        "dataset": INSTANCE_DATASET,
        "annotations": str(path),
        "images": len(image_ids),
        "detections": len(detections),
        "segmenter": model.describe_segmenter(),
        "mask_ap": dict(zip(STAT_NAMES, stats)),
        "note": None if detections else "no instance was found in any image: every AP is 0",
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("summary.json", json.dumps(summary, indent=2)),
        ("detections.json", json.dumps(detections)),
        ("summary.md", _markdown(summary)),
    ):
        write_atomically(out / name, lambda f, text=text: f.write(text.encode("utf-8")))
    return summary


def _markdown(summary: dict) -> str:
    ap = summary["mask_ap"]
    lines = [
        f"# openseg-r instance evaluation: {summary['annotations']}",
        "",
        f"{summary['images']} image(s), {summary['detections']} detection(s); segmenter "
        f"{summary['segmenter'].get('kind')}",
        "",
        "| " + " | ".join(STAT_NAMES) + " |",
        "|" + " --- |" * len(STAT_NAMES),
        "| " + " | ".join(f"{100 * ap[k]:.1f}" for k in STAT_NAMES) + " |",
    ]
    if summary["note"]:
        lines += ["", summary["note"]]
    return "\n".join(lines) + "\n"
