"""Panoptic evaluation: PQ, SQ and RQ (:mod:`openseg_r.panoptic.quality`) on a dataset in the
COCO panoptic format: images, one PNG per image (segment id = R + 256·G + 256²·B) and a
JSON whose ``annotations`` hold each PNG's ``segments_info`` and whose ``categories`` say
which are things (``isthing``). ADE20K's panoptic release and Cityscapes' converted files
use the same format.

The vocabulary is the categories in id order, each a thing or stuff as the file says;
every image is segmented as ``segment --panoptic`` would (reasoning included, with an
LMM). Each image's per-category counts go to ``images.jsonl`` as it finishes, so running
the same command again resumes, and ``--shard i/n`` takes every n-th image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from openseg_r._support.files import write_atomically
from openseg_r.errors import ConfigError
from openseg_r.panoptic.build import DEFAULT_MIN_AREA
from openseg_r.panoptic.files import rgb_to_ids
from openseg_r.panoptic.quality import PQTotals, image_pq
from openseg_r.schemas import Vocabulary, VocabularyClass

PANOPTIC_DATASET = "coco-panoptic"
ANNOTATION_CANDIDATES = ("annotations/panoptic_val2017.json", "panoptic_val2017.json", "panoptic.json")
IMAGE_FOLDERS = ("val2017", "images", ".")
RECORDS = "images.jsonl"


def annotations_file(root: str | Path, annotations: str | Path | None = None) -> Path:
    root = Path(root)
    if annotations is not None:
        if not Path(annotations).is_file():
            raise ConfigError(f"panoptic annotations not found: {annotations}")
        return Path(annotations)
    for candidate in ANNOTATION_CANDIDATES:
        if (root / candidate).is_file():
            return root / candidate
    raise ConfigError(
        f"no panoptic JSON under {root} (looked for {', '.join(ANNOTATION_CANDIDATES)}); give --annotations FILE"
    )


class PanopticDataset:
    """A COCO panoptic dataset, read and checked: every PNG exists and its ids are exactly
    its ``segments_info``'s (one line otherwise, before any model loads)."""

    def __init__(self, root: str | Path, annotations: str | Path | None = None) -> None:
        self.root = Path(root)
        self.path = annotations_file(root, annotations)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            categories = sorted(data["categories"], key=lambda c: c["id"])
            self.categories = [(int(c["id"]), str(c["name"]), bool(c.get("isthing", 1))) for c in categories]
            self.annotations = sorted(data["annotations"], key=lambda a: str(a["file_name"]))
            images = {i["id"]: plain_name(i["file_name"]) for i in data.get("images", [])}
            for annotation in self.annotations:
                plain_name(annotation["file_name"])
                if not isinstance(annotation["segments_info"], list):
                    raise TypeError(f"segments_info of {annotation['file_name']} is not a list")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.path} is not a COCO panoptic file ({type(exc).__name__}: {exc})") from None
        if not self.categories:
            raise ConfigError(f"{self.path} has no categories")
        self.index = {category: i for i, (category, _, _) in enumerate(self.categories)}
        self.png_folder = self._png_folder()
        self.image_files = {
            a["file_name"]: images.get(a.get("image_id"), Path(a["file_name"]).with_suffix(".jpg").name)
            for a in self.annotations
        }

    def _png_folder(self) -> Path:
        for candidate in (self.root / self.path.stem, self.path.parent / self.path.stem, self.root / "panoptic"):
            if candidate.is_dir():
                return candidate
        raise ConfigError(f"no folder of panoptic PNGs for {self.path} (looked for {self.path.stem}/ and panoptic/)")

    def image_path(self, annotation: dict) -> Path:
        name = self.image_files[annotation["file_name"]]
        for folder in IMAGE_FOLDERS:
            if (self.root / folder / name).is_file():
                return self.root / folder / name
        raise ConfigError(f"image {name} of {self.path.name} is not under {self.root} ({', '.join(IMAGE_FOLDERS)})")

    def ground_truth(self, annotation: dict) -> tuple[np.ndarray, dict[int, dict]]:
        """The PNG's segment ids and its segments, categories as vocabulary indices."""
        png = self.png_folder / annotation["file_name"]
        if not png.is_file():  # a device, a FIFO or nothing at all
            raise ConfigError(f"panoptic PNG {png} is missing")
        try:
            with Image.open(png) as image:
                ids = rgb_to_ids(np.asarray(image.convert("RGB")))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ConfigError(f"{png} is not a readable panoptic PNG ({type(exc).__name__})") from None
        segments = {}
        try:
            for info in annotation["segments_info"]:
                if info["category_id"] not in self.index:
                    raise ConfigError(
                        f"{png.name}: segment {info['id']} has category {info['category_id']}, not in the categories"
                    )
                segments[int(info["id"])] = {
                    "category_id": self.index[info["category_id"]],
                    "iscrowd": int(info.get("iscrowd", 0)),
                }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{png.name}: a malformed segments_info entry ({type(exc).__name__}: {exc})") from None
        found = {int(v) for v in np.unique(ids)} - {0}
        if found != set(segments):
            extra, missing = sorted(found - set(segments))[:3], sorted(set(segments) - found)[:3]
            raise ConfigError(
                f"{png.name}: its PNG ids do not match its segments_info (in the PNG only: {extra or 'none'}; "
                f"in the JSON only: {missing or 'none'})"
            )
        return ids, segments

    def check(self) -> None:
        """Every image and PNG, before any model loads: present, readable, matching, the same size."""
        for annotation in self.annotations:
            path = self.image_path(annotation)
            ids, _ = self.ground_truth(annotation)
            try:
                with Image.open(path) as image:  # the header alone: no pixels decoded
                    size = image.size
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise ConfigError(f"{path} is not a readable image ({type(exc).__name__})") from None
            if size != (ids.shape[1], ids.shape[0]):
                raise ConfigError(
                    f"{path.name} is {size[0]}x{size[1]} but its panoptic PNG is {ids.shape[1]}x{ids.shape[0]}"
                )

    def vocabulary(self, replacement: Vocabulary | None = None) -> Vocabulary:
        """The categories as a vocabulary (with ``replacement``'s queries, matched by name:
        every category must be there)."""
        by_name = {c.name.casefold(): c for c in replacement.classes} if replacement else {}
        classes = []
        for _, name, isthing in self.categories:
            given = by_name.get(name.casefold()) if replacement else None
            if replacement is not None and given is None:
                raise ConfigError(
                    f"category {name!r} of {self.path.name} is not in the vocabulary {replacement.name or ''}".rstrip()
                )
            queries = given.queries if given else [name]
            classes.append(VocabularyClass(name=name, queries=queries, kind="thing" if isthing else "stuff"))
        return Vocabulary(name=PANOPTIC_DATASET, classes=classes, kinds_source=f"{self.path.name} (isthing)")


def plain_name(name: object) -> str:
    """A file name of the dataset: a name inside its folder, never a path elsewhere."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"file_name {str(name)[:60]!r} is not a plain file name")
    return name


def run_panoptic_eval(
    model,
    dataset: PanopticDataset,
    out: str | Path,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    vocabulary: Vocabulary | None = None,
) -> dict:
    """Segment the images not yet in ``out/images.jsonl``, add each one's PQ counts to it,
    and write ``summary.json`` and ``summary.md`` over every image done."""
    out = Path(out)
    annotations = dataset.annotations[: limit if limit else None]
    if shard is not None:
        annotations = annotations[shard[0] :: shard[1]]
    vocabulary = dataset.vocabulary(vocabulary)
    config = {
        "dataset": PANOPTIC_DATASET,
        "annotations": str(dataset.path),
        "min_area": min_area,
        "segmenter": model.describe_segmenter(),
        "settings": model.settings.model_dump(mode="json"),
        "vocabulary": [[c.name, c.queries] for c in vocabulary.classes],
    }
    done = _resume(out, config)
    with open(out / RECORDS, "a", encoding="utf-8") as records:
        for annotation in annotations:
            if annotation["file_name"] in done:
                continue
            gt_ids, gt_segments = dataset.ground_truth(annotation)
            result = model.segment(str(dataset.image_path(annotation)), vocabulary)
            found = result.panoptic(min_area)
            predicted = {s.id: {"category_id": s.category_id} for s in found.segments}
            totals = image_pq(gt_ids, gt_segments, found.ids, predicted)
            line = {"file_name": annotation["file_name"], "segments": len(found.segments), "pq": totals.to_json()}
            records.write(json.dumps(line) + "\n")
            records.flush()
            done[annotation["file_name"]] = line
    return write_summary(out, config, done, dataset)


def _resume(out: Path, config: dict) -> dict[str, dict]:
    """The images already done in ``out`` (the last whole line of each), after checking
    that they were computed the same way; a new ``out`` records the config."""
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run.json"
    if run.is_file():
        try:
            earlier = json.loads(run.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot read {run} ({type(exc).__name__}); choose another --out") from None
        if earlier != json.loads(json.dumps(config)):
            changed = [k for k in config if earlier.get(k) != json.loads(json.dumps(config[k]))]
            raise ConfigError(f"{out} was evaluated with other {', '.join(changed)}; choose another --out")
    else:
        text = json.dumps(config, indent=2)
        write_atomically(run, lambda f: f.write(text.encode("utf-8")))
    done = {}
    path = out / RECORDS
    if path.is_file():
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a line cut by a kill: dropped, the image done again
            raw = raw[: raw.rfind(b"\n") + 1]
            path.write_bytes(raw)
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            try:
                record = json.loads(line)
                done[record["file_name"]] = record
                PQTotals.from_json(record["pq"])
            except (ValueError, KeyError, TypeError, IndexError):
                raise ConfigError(
                    f"{path} line {number} is not a record of this evaluation; choose another --out"
                ) from None
    return done


def write_summary(out: Path, config: dict, done: dict[str, dict], dataset: PanopticDataset) -> dict:
    totals = PQTotals()
    for record in done.values():
        totals.add(PQTotals.from_json(record["pq"]))
    isthing = {i: thing for i, (_, _, thing) in enumerate(dataset.categories)}
    scores = totals.summary(isthing)
    summary = {
        "dataset": PANOPTIC_DATASET,
        "annotations": config["annotations"],
        "images": len(done),
        "min_area": config["min_area"],
        "segmenter": config["segmenter"],
        "pq": {
            group: {k: round(100 * v, 3) if k != "n" else v for k, v in values.items()}
            for group, values in scores.items()
        },
        "totals": totals.to_json(),
    }
    lines = [
        f"# openseg-r panoptic evaluation: {config['annotations']}",
        "",
        f"{len(done)} image(s); segmenter {config['segmenter'].get('kind')}; "
        f"segments under {config['min_area']} pixels dropped",
        "",
        "| | PQ | SQ | RQ | categories |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {group} | {v['PQ']:.1f} | {v['SQ']:.1f} | {v['RQ']:.1f} | {v['n']} |"
            for group, v in summary["pq"].items()
        ),
    ]
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("summary.md", "\n".join(lines) + "\n")):
        write_atomically(out / name, lambda f, text=text: f.write(text.encode("utf-8")))
    return summary
