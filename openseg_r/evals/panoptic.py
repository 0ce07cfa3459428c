"""Panoptic evaluation: PQ, SQ and RQ (:mod:`openseg_r.panoptic.quality`) on a dataset in the
COCO panoptic format: images, one PNG per image (segment id = R + 256·G + 256²·B) and a
JSON whose ``annotations`` hold each PNG's ``segments_info`` and whose ``categories`` say
which are things (``isthing``). ADE20K's panoptic release and Cityscapes' converted files
use the same format.

The vocabulary is the categories in id order, each a thing or stuff as the file says;
every image is segmented as ``segment --panoptic`` would (reasoning included, with an
LMM), once per setting (the ablation's five, or the default one). It runs as the semantic
runner does (:mod:`openseg_r.evals.runner`): each image's per-setting, per-category counts
go to ``images.jsonl`` as it finishes, so running the same command again resumes;
``--shard i/n`` takes every n-th image and :func:`merge_panoptic` adds shards up;
``concurrency`` images run at once; Ray actors run :func:`evaluate_panoptic_image` too.
Totals are added in image-name order, so every way of running gives the same sums.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from openseg_r._support.files import write_atomically
from openseg_r._support.images import load_image
from openseg_r.errors import ConfigError
from openseg_r.evals.datasets import Sample, select
from openseg_r.evals.runner import (
    ImagePipeline,
    SettingTotals,
    comparable_segmenter,
    eval_settings,
    local_throughput,
)
from openseg_r.panoptic.build import DEFAULT_MIN_AREA
from openseg_r.panoptic.files import rgb_to_ids
from openseg_r.panoptic.quality import PQTotals, image_pq
from openseg_r.schemas import Vocabulary, VocabularyClass

PANOPTIC_DATASET = "coco-panoptic"
ANNOTATION_CANDIDATES = ("annotations/panoptic_val2017.json", "panoptic_val2017.json", "panoptic.json")
IMAGE_FOLDERS = ("val2017", "images", ".")
RUN_FILE, RECORDS, FAILED_FILE = "run.json", "images.jsonl", "failed.jsonl"


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
        self._found: dict[str, list[Path]] | None = None  # images found by walking the root, when needed
        self.matched_by_position: list[str] = []  # categories the last vocabulary() matched by position
        self.by_name = {a["file_name"]: a for a in self.annotations}
        if len(self.by_name) != len(self.annotations):
            raise ConfigError(f"{self.path} lists a panoptic PNG twice")
        self.image_files = {
            a["file_name"]: images.get(a.get("image_id"), Path(a["file_name"]).with_suffix(".jpg").name)
            for a in self.annotations
        }

    def samples(self, limit: int | None = None, seed: int = 0, shard: tuple[int, int] | None = None) -> list[Sample]:
        """The images to evaluate, chosen as the semantic benchmarks choose them (sorted by
        PNG name, ``limit`` drawn with ``seed``, then every n-th for shard i of n)."""
        chosen = select([Sample(name, Path(), Path()) for name in self.by_name], limit, seed, shard)
        return [Sample(s.id, self.image_path(self.by_name[s.id]), self.png_folder / s.id) for s in chosen]

    def _png_folder(self) -> Path:
        for candidate in (self.root / self.path.stem, self.path.parent / self.path.stem, self.root / "panoptic"):
            if candidate.is_dir():
                return candidate
        raise ConfigError(f"no folder of panoptic PNGs for {self.path} (looked for {self.path.stem}/ and panoptic/)")

    def image_path(self, annotation: dict) -> Path:
        """The image of ``annotation``: in one of ``IMAGE_FOLDERS``, else the one file of that
        name anywhere under the root (ADE20K's images/validation/, Cityscapes' city folders)."""
        name = self.image_files[annotation["file_name"]]
        for folder in IMAGE_FOLDERS:
            if (self.root / folder / name).is_file():
                return self.root / folder / name
        if self._found is None:
            self._found = self._find_images()
        places = self._found.get(name, [])
        if len(places) == 1:
            return places[0]
        if places:
            raise ConfigError(
                f"image {name} of {self.path.name} is in {len(places)} places under {self.root} "
                f"({places[0].parent}, {places[1].parent}); give --root the folder that holds the right one"
            )
        raise ConfigError(f"image {name} of {self.path.name} is nowhere under {self.root}")

    def _find_images(self) -> dict[str, list[Path]]:
        """Every file under the root whose name an annotation's image has (one walk)."""
        wanted = set(self.image_files.values())
        found: dict[str, list[Path]] = {}
        for folder, _, files in os.walk(self.root):
            for name in wanted.intersection(files):
                found.setdefault(name, []).append(Path(folder) / name)
        return found

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
        """The categories as a vocabulary, each a thing or stuff as the file says. Its queries
        are the category's comma-separated names (ADE20K's "road, route"), or with
        ``replacement``, those of the class matched to it (:func:`match_categories`)."""
        names = [name for _, name, _ in self.categories]
        if replacement is None:
            queries = [[w.strip() for w in name.split(",") if w.strip()] or [name] for name in names]
            self.matched_by_position = []
        else:
            matched, self.matched_by_position = match_categories(names, replacement, self.path.name)
            queries = [c.queries for c in matched]
        classes = [
            VocabularyClass(name=name.strip() or name, queries=q, kind="thing" if isthing else "stuff")
            for (_, name, isthing), q in zip(self.categories, queries)
        ]
        return Vocabulary(name=PANOPTIC_DATASET, classes=classes, kinds_source=f"{self.path.name} (isthing)")


POSITION_AGREEMENT = 0.9  # names that must agree before the rest may be matched by position


def match_categories(
    names: list[str], vocabulary: Vocabulary, source: str = "the dataset"
) -> tuple[list[VocabularyClass], list[str]]:
    """The class of ``vocabulary`` (background aside) for each category name, and the names
    matched by position. A category matches the class of its name, else the one class that
    has its first comma-separated name, else the one class sharing any of its names (as a
    name or a query; case and spaces aside). When some do not match but the vocabulary has
    one class per category and at least 90% of the names match their own position (the same
    order, as ``ade150`` against ADE20K's panoptic "window " and "tub"), all match by position.
    Otherwise the first category without a class is one line."""
    classes = [c for c in vocabulary.classes if not c.is_background]
    found = [_class_for(name, classes) for name in names]
    if None not in found and len(set(found)) == len(found):
        return [classes[i] for i in found], []
    if len(classes) == len(names) and sum(i == j for i, j in enumerate(found)) >= POSITION_AGREEMENT * len(names):
        return classes, [name.strip() for i, name in enumerate(names) if found[i] != i]
    missing = next(name for i, name in enumerate(names) if found[i] is None or found.count(found[i]) > 1)
    raise ConfigError(f"category {missing!r} of {source} is not in the vocabulary {vocabulary.name or ''}".rstrip())


def _class_for(name: str, classes: list[VocabularyClass]) -> int | None:
    def words(text: str) -> list[str]:
        return [w.strip().casefold() for w in text.split(",") if w.strip()]

    whole, parts = name.strip().casefold(), words(name)
    for test in (
        lambda c: c.name.strip().casefold() == whole,
        lambda c: bool(parts) and c.name.strip().casefold() == parts[0],
        lambda c: bool(set(parts) & {c.name.strip().casefold(), *(q.strip().casefold() for q in c.queries)}),
    ):
        hits = [i for i, c in enumerate(classes) if test(c)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return None  # ambiguous: no looser test can make it less so
    return None


def plain_name(name: object) -> str:
    """A file name of the dataset: a name inside its folder, never a path elsewhere."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"file_name {str(name)[:60]!r} is not a plain file name")
    return name


@dataclass
class PanopticState:
    """A results folder: its config (run.json), each image's line, and the images that
    failed (with an engine that goes on past one)."""

    config: dict
    records: dict[str, dict] = field(default_factory=dict)  # image (PNG name) -> its images.jsonl line
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def done(self):
        """The images done (the records' keys: a live, set-like view)."""
        return self.records.keys()

    def add(self, record: dict) -> None:
        """One image's line (as :func:`evaluate_panoptic_image` makes it), checked."""
        settings = record["settings"]
        if set(settings) != set(self.config["settings"]):
            raise ValueError("its settings are not this evaluation's")
        for entry in settings.values():
            PQTotals.from_json(entry["pq"])
        self.records[str(record["id"])] = record


def panoptic_config(
    model,
    dataset: PanopticDataset,
    vocabulary: Vocabulary,
    settings: list[tuple[str, dict]],
    *,
    min_area: int,
    limit: int | None,
    seed: int,
    shard: tuple[int, int] | None,
    throughput: dict,
) -> dict:
    """What run.json records: everything a resumed run must match, and (``throughput``,
    never compared) how it ran."""
    return {
        "dataset": PANOPTIC_DATASET,
        "annotations": str(dataset.path.resolve()),
        "min_area": min_area,
        "segmenter": model.describe_segmenter(),
        "lmm": model.lmm.model_id,
        # allow_fallback changes no number: an evaluation may resume with or without it
        "base_settings": model.settings.model_dump(mode="json", exclude={"allow_fallback"}),
        "settings": [name for name, _ in settings],
        "setting_overrides": {name: overrides for name, overrides in settings},
        "vocabulary": [[c.name, c.queries] for c in vocabulary.classes],
        "isthing": [thing for _, _, thing in dataset.categories],
        "limit": limit,
        "seed": seed,
        "shard": list(shard) if shard else None,
        "throughput": throughput,
    }


COMPARED_ON_MERGE = ("dataset", "annotations", "min_area", "lmm", "base_settings", "settings", "vocabulary", "limit")


def evaluate_panoptic_image(
    model,
    dataset: PanopticDataset,
    vocabulary: Vocabulary,
    sample: Sample,
    settings: list[tuple[str, dict]],
    min_area: int,
    on_event=None,
) -> dict:
    """One image's line: per setting, its segments' per-category PQ counts, seconds, LMM
    calls and tokens. It runs on a worker thread or a Ray actor: it touches no shared state."""
    gt_ids, gt_segments = dataset.ground_truth(dataset.by_name[sample.id])
    rgb = load_image(sample.image)  # decoded once: the segmenter reuses its features across settings
    if rgb.shape[:2] != gt_ids.shape:
        raise ConfigError(
            f"{sample.image.name} is {rgb.shape[1]}x{rgb.shape[0]} but its panoptic PNG is "
            f"{gt_ids.shape[1]}x{gt_ids.shape[0]}"
        )
    record: dict = {"id": sample.id, "settings": {}}
    for name, overrides in settings:
        started = time.perf_counter()
        result = model.segment(rgb, vocabulary, on_event=on_event, **overrides)
        found = result.panoptic(min_area)
        seconds = time.perf_counter() - started
        predicted = {s.id: {"category_id": s.category_id} for s in found.segments}
        calls = result.state.lmm_calls
        record["settings"][name] = {
            "segments": len(found.segments),
            "pq": image_pq(gt_ids, gt_segments, found.ids, predicted).to_json(),
            "seconds": round(seconds, 4),
            "lmm_calls": len(calls),
            "tokens": sum(c.usage.prompt_tokens + c.usage.completion_tokens for c in calls),
        }
    return record


def run_panoptic_eval(
    model,
    dataset: PanopticDataset,
    out: str | Path,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    limit: int | None = None,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    vocabulary: Vocabulary | None = None,
    ablation: bool = False,
    concurrency: int = 1,
    progress: bool = False,
) -> dict:
    """Segment the images not yet in ``out/images.jsonl`` with every setting (the
    ablation's, or the default one), add each one's PQ counts to it as it finishes, and
    write ``summary.json`` and ``summary.md`` over every image done."""
    from openseg_r.nodes.stages import ReasoningSlots

    slots = ReasoningSlots(concurrency)  # a bad value fails before anything is written
    out = Path(out)
    vocabulary = dataset.vocabulary(vocabulary)
    settings = eval_settings(model, ablation)
    samples = dataset.samples(limit, seed, shard)
    config = panoptic_config(
        model,
        dataset,
        vocabulary,
        settings,
        min_area=min_area,
        limit=limit,
        seed=seed,
        shard=shard,
        throughput=local_throughput(model, concurrency),
    )
    state = open_panoptic_state(out, config)
    todo = [s for s in samples if s.id not in state.records]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="eval coco-panoptic", unit="img")

    def evaluate(sample: Sample) -> dict:
        with slots.slot() as on_event:  # given back when its reasoning is done
            return evaluate_panoptic_image(model, dataset, vocabulary, sample, settings, min_area, on_event)

    with open(out / RECORDS, "a", encoding="utf-8") as records, ImagePipeline(evaluate, todo, slots.workers) as run:
        for record in run:
            records.write(json.dumps(record) + "\n")  # one whole line per image, as it finishes
            records.flush()
            state.add(record)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return write_panoptic_reports(state, out)


def open_panoptic_state(out: str | Path, config: dict) -> PanopticState:
    """The folder's evaluation so far, after checking that it was computed the same way (a
    new folder records the config); a last line cut by a kill is dropped, its image done
    again, and any other line that is not a record of this evaluation is one line."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = out / RUN_FILE
    current = json.loads(json.dumps(config))  # as it would be read back
    if run.is_file():
        earlier = _read_run_file(run, "; choose another --out")
        changed = [k for k in current if k not in ("throughput", "segmenter") and earlier.get(k) != current[k]]
        if comparable_segmenter(earlier.get("segmenter")) != comparable_segmenter(current["segmenter"]):
            changed.append("segmenter")  # where and how fast it ran (device, dtype, batches) may change
        if changed:
            raise ConfigError(f"{out} was evaluated with other {', '.join(changed)}; choose another --out")
        if earlier.get("throughput") != current["throughput"]:  # information only: the latest run's
            current = dict(earlier, throughput=current["throughput"])
    text = json.dumps(current, indent=2)
    write_atomically(run, lambda f: f.write(text.encode("utf-8")))
    state = PanopticState(current)
    path = out / RECORDS
    if path.is_file():
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a line cut by a kill: dropped, the image done again
            raw = raw[: raw.rfind(b"\n") + 1]
            path.write_bytes(raw)
        _add_lines(state, path, raw)
    return state


def is_panoptic_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a coco-panoptic evaluation (its run.json says so)."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text(encoding="utf-8")).get("dataset") == PANOPTIC_DATASET
    except (ValueError, OSError, AttributeError):
        return False


def _read_run_file(run: Path, advice: str = "") -> dict:
    try:
        earlier = json.loads(run.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot read {run} ({type(exc).__name__}){advice}") from None
    if not isinstance(earlier, dict) or earlier.get("dataset") != PANOPTIC_DATASET:
        raise ConfigError(f"{run} is not a coco-panoptic evaluation{advice}")
    return earlier


def _add_lines(state: PanopticState, path: Path, raw: bytes, advice: str = "; choose another --out") -> None:
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            state.add(json.loads(line))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise ConfigError(f"{path} line {number} is not a record of this evaluation{advice}") from None


def merge_panoptic(folders: list[str | Path], out: str | Path) -> dict:
    """Add the shards' per-image counts (an image in two shards counts once)."""
    configs = [_read_run_file(Path(folder) / RUN_FILE) for folder in folders]
    for other in configs[1:]:
        changed = [k for k in COMPARED_ON_MERGE if other.get(k) != configs[0].get(k)]
        if changed:
            raise ConfigError(f"the shards differ in {', '.join(changed)}; only shards of one evaluation merge")
    config = dict(configs[0], shard=None, merged_from=[str(f) for f in folders])
    state = PanopticState(config)
    for folder in folders:
        path = Path(folder) / RECORDS
        if path.is_file():
            raw = path.read_bytes()
            _add_lines(state, path, raw[: raw.rfind(b"\n") + 1], "")  # a shard killed mid-line: its whole lines
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2)
    write_atomically(out / RUN_FILE, lambda f: f.write(text.encode("utf-8")))
    return write_panoptic_reports(state, out)


def write_panoptic_reports(state: PanopticState, out: str | Path) -> dict:
    """summary.json and summary.md: per setting PQ, SQ and RQ (in %) over all categories
    that occur, over things and over stuff, with the change in PQ from the first setting,
    LMM calls, tokens and seconds per image, and the per-category counts."""
    config = state.config
    isthing = dict(enumerate(config["isthing"]))
    totals = {name: SettingTotals(PQTotals()) for name in config["settings"]}
    for image in sorted(state.records):  # one order for every run: the float sums are the same
        for name, entry in state.records[image]["settings"].items():
            setting = totals[name]
            setting.counts.add(PQTotals.from_json(entry["pq"]))
            setting.images += 1
            setting.seconds += entry["seconds"]
            setting.lmm_calls += entry["lmm_calls"]
            setting.tokens += entry["tokens"]
    table, first = [], None
    for name, setting in totals.items():
        scores = {
            group: {k: round(100 * v, 3) if k != "n" else v for k, v in values.items()}
            for group, values in setting.counts.summary(isthing).items()
        }
        first = scores["all"]["PQ"] if first is None else first
        images = max(1, setting.images)
        table.append(
            {
                "setting": name,
                "pq": scores,
                "delta_pq": round(scores["all"]["PQ"] - first, 3),
                "lmm_calls_per_image": round(setting.lmm_calls / images, 2),
                "tokens_per_image": round(setting.tokens / images, 1),
                "seconds_per_image": round(setting.seconds / images, 3),
                "totals": setting.counts.to_json(),
            }
        )
    summary = {
        "dataset": PANOPTIC_DATASET,
        "annotations": config["annotations"],
        "images": len(state.records),
        "min_area": config["min_area"],
        "segmenter": config["segmenter"],
        "lmm": config["lmm"],
        "table": table,
    }
    if state.failed:  # images left out of every number (see failed.jsonl)
        summary["failed"] = len(state.failed)
    out = Path(out)
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("summary.md", _markdown(summary))):
        write_atomically(out / name, lambda f, text=text: f.write(text.encode("utf-8")))
    return summary


def _markdown(summary: dict) -> str:
    lines = [
        f"# openseg-r panoptic evaluation: {summary['annotations']}",
        "",
        f"{summary['images']} image(s); LMM {summary['lmm']}; segmenter {summary['segmenter'].get('kind')}; "
        f"segments under {summary['min_area']} pixels dropped",
        "",
        "| setting | PQ | SQ | RQ | PQ things | PQ stuff | Δ PQ | LMM calls / image | s / image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["table"]:
        pq = row["pq"]
        lines.append(
            f"| {row['setting']} | {pq['all']['PQ']:.1f} | {pq['all']['SQ']:.1f} | {pq['all']['RQ']:.1f} | "
            f"{pq['things']['PQ']:.1f} | {pq['stuff']['PQ']:.1f} | {row['delta_pq']:+.1f} | "
            f"{row['lmm_calls_per_image']} | {row['seconds_per_image']} |"
        )
    last = summary["table"][-1]
    lines += [
        "",
        f"Setting {last['setting']!r}, by kind:",
        "",
        "| | PQ | SQ | RQ | categories |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {group} | {v['PQ']:.1f} | {v['SQ']:.1f} | {v['RQ']:.1f} | {v['n']} |" for group, v in last["pq"].items()),
    ]
    if summary.get("failed"):
        lines += ["", f"{summary['failed']} image(s) failed and are left out of every number: see {FAILED_FILE}."]
    return "\n".join(lines) + "\n"
