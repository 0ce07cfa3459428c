"""Readers for the standard benchmarks, in the layouts mmsegmentation's and detectron2's
preparation scripts produce, plus a plain folder layout for your own data.

Each reader takes a root folder and a split, and yields :class:`Sample` (an id, the
image path, the label path); ``load_label`` turns a label file into class indices with
the dataset's ignore index. A wrong layout is an error that lists what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from openseg_r.errors import OpenSegRError
from openseg_r.evals.metrics import reduce_zero_label
from openseg_r.schemas import Vocabulary
from openseg_r.vocab import load_builtin, load_vocabulary_file

IGNORE = 255
IGNORE_16BIT = 65535  # detectron2's ignore value for the 16-bit ADE-847 and PC-459 maps


class DatasetError(OpenSegRError):
    """The dataset's folder layout is not what the reader expects."""


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    vocabulary: str  # a built-in vocabulary name ("" for the folder layout: classes.txt)
    default_split: str
    layout: str  # for error messages
    find: Callable[[Path, str], list[Sample]]
    convert: Callable[[np.ndarray], np.ndarray]  # raw label values -> class indices / ignore
    ignore_index: int = IGNORE

    def samples(self, root: str | Path, split: str | None = None) -> list[Sample]:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"{self.name}: the root {root} is not a folder")
        samples = self.find(root, split or self.default_split)
        if not samples:
            raise DatasetError(f"{self.name}: no images found for split {split or self.default_split!r} under {root}")
        missing = [s.label for s in samples if not s.label.is_file()]
        if missing:
            raise DatasetError(f"{self.name}: {len(missing)} image(s) have no label file, e.g. {missing[0]}")
        return samples

    def load_label(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            raw = np.asarray(image)
        if raw.ndim == 3:
            raise DatasetError(f"{path}: a label map must have one channel (class indices), not {raw.shape[2]}")
        return self.convert(raw.astype(np.int64))

    def load_vocabulary(self, root: str | Path) -> Vocabulary:
        if self.vocabulary:
            return load_builtin(self.vocabulary)
        path = Path(root) / "classes.txt"
        if not path.is_file():
            raise DatasetError(f"{self.name}: {path} is missing (one class per line, line i = label i)")
        return load_vocabulary_file(path)


def _first_existing(root: Path, candidates: list[str], required: list[str], name: str, layout: str) -> Path:
    """The first candidate base under root that has every required entry; else a clear error."""
    tried = []
    for candidate in candidates:
        base = root / candidate if candidate else root
        missing = [entry for entry in required if not (base / entry).exists()]
        if not missing:
            return base
        tried.append(f"{base}: missing {', '.join(missing)}")
    raise DatasetError(f"{name}: the {layout} layout was not found. Looked in:\n  " + "\n  ".join(tried))


def _from_list(
    base: Path, list_file: str, image_dir: str, image_ext: str, label_dir: str, label_ext: str
) -> list[Sample]:
    ids = [line.strip() for line in (base / list_file).read_text().splitlines() if line.strip()]
    return [Sample(i, base / image_dir / f"{i}{image_ext}", base / label_dir / f"{i}{label_ext}") for i in ids]


def _from_folder(
    image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str, recursive=False
) -> list[Sample]:
    pattern = f"**/*{image_suffix}" if recursive else f"*{image_suffix}"
    samples = []
    for image in sorted(image_dir.glob(pattern)):
        relative = image.relative_to(image_dir)
        stem = str(relative)[: -len(image_suffix)]
        samples.append(Sample(stem, image, label_dir / f"{stem}{label_suffix}"))
    return samples


# --------------------------------------------------------------------------- layouts


def _voc(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "VOC2012", "VOCdevkit/VOC2012"],
        ["JPEGImages", "SegmentationClass", f"ImageSets/Segmentation/{split}.txt"],
        "VOC",
        "mmseg VOC2012",
    )
    return _from_list(base, f"ImageSets/Segmentation/{split}.txt", "JPEGImages", ".jpg", "SegmentationClass", ".png")


def _context(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "VOC2010", "VOCdevkit/VOC2010"],
        ["JPEGImages", "SegmentationClassContext", f"ImageSets/SegmentationContext/{split}.txt"],
        "PASCAL-Context",
        "mmseg VOC2010 (SegmentationClassContext)",
    )
    return _from_list(
        base, f"ImageSets/SegmentationContext/{split}.txt", "JPEGImages", ".jpg", "SegmentationClassContext", ".png"
    )


def _context459(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "pascal_ctx_d2"],
        [f"images/{split}", f"annotations_ctx459/{split}"],
        "PC-459",
        "detectron2 pascal_ctx_d2",
    )
    return _from_folder(base / "images" / split, base / "annotations_ctx459" / split, ".jpg", ".tif")


def _ade150(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "ADEChallengeData2016", "ade/ADEChallengeData2016"],
        [f"images/{split}", f"annotations/{split}"],
        "ADE20K-150",
        "mmseg ADEChallengeData2016",
    )
    return _from_folder(base / "images" / split, base / "annotations" / split, ".jpg", ".png")


def _ade847(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "ADE20K_2021_17_01", "ade/ADE20K_2021_17_01"],
        [f"images_detectron2/{split}", f"annotations_detectron2/{split}"],
        "ADE-847",
        "detectron2 ADE20K_2021_17_01",
    )
    return _from_folder(base / "images_detectron2" / split, base / "annotations_detectron2" / split, ".jpg", ".tif")


def _coco_stuff(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "coco_stuff164k"],
        [f"images/{split}", f"annotations/{split}"],
        "COCO-Stuff-171",
        "mmseg coco_stuff164k",
    )
    return _from_folder(base / "images" / split, base / "annotations" / split, ".jpg", "_labelTrainIds.png")


def _coco_object(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "coco_object"],
        [f"images/{split}", f"annotations/{split}"],
        "COCO-Object",
        "coco_object (SCLIP/NACLIP)",
    )
    return _from_folder(base / "images" / split, base / "annotations" / split, ".jpg", "_instanceTrainIds.png")


def _cityscapes(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        ["", "cityscapes"],
        [f"leftImg8bit/{split}", f"gtFine/{split}"],
        "Cityscapes",
        "cityscapes (leftImg8bit, gtFine labelTrainIds)",
    )
    samples = _from_folder(
        base / "leftImg8bit" / split,
        base / "gtFine" / split,
        "_leftImg8bit.png",
        "_gtFine_labelTrainIds.png",
        recursive=True,
    )
    return samples


def _folder(root: Path, split: str) -> list[Sample]:
    base = _first_existing(
        root,
        [split, ""],
        ["images", "labels", "classes.txt"],
        "folder",
        "folder (images/, labels/ with PNG class indices, classes.txt)",
    )
    samples = []
    for image in sorted(p for p in (base / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        samples.append(Sample(image.stem, image, base / "labels" / f"{image.stem}.png"))
    return samples


def _keep(label: np.ndarray) -> np.ndarray:
    return label


def _sixteen_bit(label: np.ndarray) -> np.ndarray:
    return label  # 0..N-1, 65535 ignore, as detectron2 writes them


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("voc21", "voc21", "val", "mmseg VOC2012", _voc, _keep),
        DatasetSpec("voc20", "voc20", "val", "mmseg VOC2012 (background ignored)", _voc, reduce_zero_label),
        DatasetSpec("pc60", "pc60", "val", "mmseg VOC2010 context", _context, _keep),
        DatasetSpec("pc59", "pc59", "val", "mmseg VOC2010 context (background ignored)", _context, reduce_zero_label),
        DatasetSpec(
            "pc459", "pc459", "validation", "detectron2 pascal_ctx_d2", _context459, _sixteen_bit, IGNORE_16BIT
        ),
        DatasetSpec(
            "ade150",
            "ade150",
            "validation",
            "mmseg ADEChallengeData2016 (reduce-zero-label)",
            _ade150,
            reduce_zero_label,
        ),
        DatasetSpec(
            "ade847", "ade847", "validation", "detectron2 ADE20K_2021_17_01", _ade847, _sixteen_bit, IGNORE_16BIT
        ),
        DatasetSpec("coco_stuff171", "coco_stuff171", "val2017", "mmseg coco_stuff164k", _coco_stuff, _keep),
        DatasetSpec("coco_object", "coco_object", "val2017", "coco_object", _coco_object, _keep),
        DatasetSpec("cityscapes", "cityscapes", "val", "cityscapes", _cityscapes, _keep),
        DatasetSpec("folder", "", "", "images/ + labels/ + classes.txt", _folder, _keep),
    ]
}


def get_dataset(name: str) -> DatasetSpec:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[key]


def select(
    samples: list[Sample], limit: int | None = None, seed: int = 0, shard: tuple[int, int] | None = None
) -> list[Sample]:
    """A deterministic subset: sorted by id, ``limit`` drawn with ``seed``, then shard i of n
    (every n-th image from i), so shards never overlap and together cover the subset."""
    ordered = sorted(samples, key=lambda s: s.id)
    if limit is not None and limit < len(ordered):
        chosen = np.random.default_rng(seed).choice(len(ordered), size=limit, replace=False)
        ordered = [ordered[i] for i in sorted(chosen)]
    if shard is not None:
        index, count = shard
        ordered = ordered[index::count]
    return ordered
