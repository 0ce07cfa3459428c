"""The callable classes Ray Data's ``map_batches`` runs in its actor pool: each builds the
model once, in ``__init__``, through the project's single builder, then evaluates or
segments the batches it is given. They never write files: they return per-row records
and the driver writes them (so a retried batch cannot write an image twice)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from openseg_r._support.cache import MemoryReasoningCache


class RecordingReasoningCache(MemoryReasoningCache):
    """An actor's in-memory cache: seeded with the driver's generic reasoning, it keeps
    the image reasoning put into it per image, so the driver can merge it into the
    user's cache."""

    def __init__(self, seed: list[dict] | None = None) -> None:
        super().__init__()
        for entry in seed or []:
            super().put(entry["kind"], entry["key"], entry["value"])
        self._recorded: list[dict] = []

    def put(self, kind: str, key: dict, value: dict) -> None:
        super().put(kind, key, value)
        if kind == "image":
            with self._lock:
                self._recorded.append({"kind": kind, "key": key, "value": value})

    def take_recorded(self) -> list[dict]:
        with self._lock:
            recorded, self._recorded = self._recorded, []
        return recorded


def build_model(
    options: dict,
    settings: dict | None,
    generic: list[dict] | None,
    lmm_concurrency: int | None,
    threads: int | None = None,
):
    """The model an actor runs: the driver's options, with reasoning in a memory cache seeded
    with ``generic`` (so actors ask no generic reasoning), and no runs database. ``threads``:
    torch's intra-op threads in this process (the CPUs Ray gave the actor; Ray's own default
    is 1). The labels do not depend on it (docs/design.md §2.5), only the speed."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from openseg_r.config.options import ModelOptions
    from openseg_r.config.settings import Settings
    from openseg_r.model import OpenSegR

    overrides = {"reasoning_cache": None, "runs_db": None}
    if lmm_concurrency is not None:
        overrides |= {
            "lmm_concurrency": lmm_concurrency,
            "lmm_options": None
            if options.get("lmm_options") is None
            else {**options["lmm_options"], "concurrency": None},
        }
    model_options = ModelOptions.model_validate({**options, **overrides})
    model = OpenSegR.from_options(model_options, settings=Settings.model_validate(settings) if settings else None)
    cache = RecordingReasoningCache(generic)
    model.reasoning_cache = cache
    return model, cache


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def column(batch: dict, name: str) -> list:
    return [value.item() if isinstance(value, np.generic) else value for value in batch[name]]


class EvalActor:
    """Evaluates a batch of samples {"id", "image", "label"} (paths) with every setting of
    the run, through the same per-image function the local runner uses; the batch's images
    run at once on threads (their LMM calls overlap; forward passes share the micro-batcher).
    ``task`` names what is evaluated: {"dataset": NAME} (a semantic benchmark) or
    {"dataset": "coco-panoptic", "root", "annotations", "min_area"}.

    Per row it returns "id", "record" (the images.jsonl line), "error" ("" or one line: the
    image failed, never raised) and "image_reasoning" (JSON of the cache entries the row
    made)."""

    def __init__(
        self,
        options: dict,
        settings: dict | None,
        vocabulary: dict,
        task: dict,
        setting_overrides: list,
        generic: list[dict],
        lmm_concurrency: int | None = None,
        threads: int | None = None,
        ledger=None,
    ) -> None:
        from openseg_r.distributed.ledger import LedgerClient
        from openseg_r.evals.panoptic import PANOPTIC_DATASET, PanopticDataset
        from openseg_r.schemas import Vocabulary

        self.ledger = LedgerClient(ledger)
        self.model, self.cache = build_model(options, settings, generic, lmm_concurrency, threads)
        self.vocabulary = Vocabulary.model_validate(vocabulary)
        self.settings = [(name, overrides) for name, overrides in setting_overrides]
        self.task = task
        if task["dataset"] == PANOPTIC_DATASET:
            self.dataset = PanopticDataset(task["root"], task["annotations"])
        else:
            from openseg_r.evals.datasets import get_dataset

            self.dataset = get_dataset(task["dataset"])

    def _record(self, sample) -> dict:
        from openseg_r.evals import panoptic, runner  # looked up per image: the functions as they are now

        if "min_area" in self.task:
            return panoptic.evaluate_panoptic_image(
                self.model, self.dataset, self.vocabulary, sample, self.settings, self.task["min_area"]
            )
        record, _ = runner.evaluate_image(self.model, self.dataset, self.vocabulary, sample, self.settings)
        return record

    def _evaluate(self, sample) -> tuple[str, str]:
        over_budget = self.ledger.start(sample.id)
        if over_budget is not None:
            return "", over_budget
        try:
            record = self._record(sample)
        except Exception as exc:  # noqa: BLE001 (recorded as this image's failure; the others go on)
            return "", one_line(exc)
        finally:
            self.ledger.finish(sample.id)
        return json.dumps(record), ""

    def __call__(self, batch: dict) -> dict:
        from pathlib import Path

        from openseg_r.evals.datasets import Sample

        samples = [
            Sample(str(i), Path(image), Path(label))
            for i, image, label in zip(column(batch, "id"), column(batch, "image"), column(batch, "label"))
        ]
        self.cache.take_recorded()  # one batch at a time per actor: what it records now is this batch's
        if self.ledger.suspects([s.id for s in samples]):  # a crash before: one at a time, to find the culprit
            results = [self._evaluate(sample) for sample in samples]
        else:
            with ThreadPoolExecutor(max_workers=max(1, len(samples))) as pool:
                results = list(pool.map(self._evaluate, samples))
        return {
            "id": [s.id for s in samples],
            "record": [record for record, _ in results],
            "error": [error for _, error in results],
            "image_reasoning": batch_reasoning(self.cache, len(samples)),
        }


def batch_reasoning(cache: RecordingReasoningCache, rows: int) -> list[str]:
    """The batch's image reasoning on its first row (the cache does not tell images apart)."""
    return [json.dumps(cache.take_recorded())] + ["[]"] * (rows - 1) if rows else []


class SegmentActor:
    """Segments a batch of rows {"path"} (a file) or {"image"} (an HxWx3 uint8 array) with
    the batched segmenter (:meth:`OpenSegR.segment_many`: the batch's images at once).

    Per row: "path", "labels_rle" (JSON: a COCO RLE mask per present class; ``masks="array"``
    gives "labels", the label map, instead), "present" and "classes" (JSON: pixels,
    area_fraction, mean_confidence per class), "trace" (JSON: LMM calls, tokens, fallbacks,
    seconds), "error" ("" or one line). With ``files``, also "files": the result folder's
    files (labels.png, overlay.png, result.json, ...) as JSON {relative path: base64}, for a
    driver that writes them where it wants. With ``instances`` (segmenters that find them),
    also "instances": JSON, the image's instances in the COCO results format, and the files
    include instances.json and outlines on the overlay. With ``panoptic`` (the smallest
    segment's area), the files include panoptic.png and panoptic.json."""

    def __init__(
        self,
        options: dict,
        settings: dict | None,
        vocabulary: dict,
        generic: list[dict] | None = None,
        lmm_concurrency: int | None = None,
        masks: str = "rle",
        files: bool = False,
        threads: int | None = None,
        instances: bool = False,
        panoptic: int | None = None,
    ) -> None:
        from openseg_r.schemas import Vocabulary

        self.model, self.cache = build_model(options, settings, generic, lmm_concurrency, threads)
        self.vocabulary = Vocabulary.model_validate(vocabulary)
        self.masks, self.files, self.instances, self.panoptic = masks, files, instances, panoptic

    def __call__(self, batch: dict) -> dict:
        rows = len(next(iter(batch.values()))) if batch else 0
        paths = column(batch, "path") if "path" in batch else [None] * rows
        images = [
            path if path is not None else np.asarray(pixels, dtype=np.uint8)
            for path, pixels in zip(paths, batch["image"] if "image" in batch else [None] * rows)
        ]
        self.cache.take_recorded()
        outcomes = self.model.segment_many(images, self.vocabulary, concurrency=max(1, rows))
        out: dict[str, list] = {
            "path": [p or "" for p in paths],
            "present": [],
            "classes": [],
            "trace": [],
            "error": [],
            "labels_rle" if self.masks == "rle" else "labels": [],
        }
        if self.files:
            out["files"] = []
        if self.instances:
            out["instances"] = []
        for outcome in outcomes:
            result = outcome.result
            error = "" if outcome.ok else (outcome.error or "unknown error")
            out["error"].append(error)
            out["present"].append(json.dumps(result.present if result else []))
            out["classes"].append(json.dumps([c.model_dump() for c in result.classes if c.pixels] if result else []))
            out["trace"].append(json.dumps(trace_summary(result, outcome.seconds)))
            if self.masks == "rle":
                out["labels_rle"].append(json.dumps(class_rles(result) if result else {}))
            else:
                out["labels"].append(result.labels if result else np.zeros((0, 0), np.int32))
            if self.files:
                out["files"].append(json.dumps(folder_files(result, self.instances, self.panoptic) if result else {}))
            if self.instances:
                out["instances"].append(json.dumps(result.coco_instances(outcome.source or 0) if result else []))
        out["image_reasoning"] = batch_reasoning(self.cache, rows)
        return out


def trace_summary(result, seconds: float) -> dict:
    if result is None:
        return {"lmm_calls": 0, "tokens": 0, "fallbacks": 0, "seconds": round(seconds, 3)}
    calls = result.state.lmm_calls
    return {
        "lmm_calls": len(calls),
        "tokens": sum(c.usage.prompt_tokens + c.usage.completion_tokens for c in calls),
        "fallbacks": len(result.state.fallbacks),
        "seconds": round(seconds, 3),
    }


def class_rles(result) -> dict[str, dict]:
    """COCO RLE of each present class's mask (the format of the MCP/HTTP tools' masks)."""
    from openseg_r._support.rle import encode_rle

    return {c.name: encode_rle(result.labels == c.index) for c in result.classes if c.pixels}


def folder_files(result, instances: bool = False, panoptic: int | None = None) -> dict[str, str]:
    """The files :meth:`SegmentationResult.save` writes (with ``instances`` and ``panoptic``
    as there), read back as base64."""
    import base64
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="openseg-r-") as folder:
        result.save(folder, instances=instances, panoptic=panoptic)
        return {
            str(path.relative_to(folder)): base64.b64encode(path.read_bytes()).decode("ascii")
            for path in sorted(Path(folder).rglob("*"))
            if path.is_file()
        }
