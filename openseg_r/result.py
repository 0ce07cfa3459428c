"""What a user gets back: arrays, the readable trace, and files on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from openseg_r import __version__
from openseg_r._support.files import write_atomically
from openseg_r._support.render import label_image, overlay_image
from openseg_r.graph.state import OpenSegState
from openseg_r.panoptic.build import DEFAULT_MIN_AREA
from openseg_r.schemas import UNKNOWN_LABEL, ClassSummary, region_order


@dataclass
class SegmentationResult:
    labels: np.ndarray  # (H, W) int32 index into state.vocabulary
    confidence: np.ndarray  # (H, W) float32
    image: np.ndarray  # (H, W, 3) uint8, the input as decoded
    state: OpenSegState  # the graph's final state: reasoning, prompts, timings, LMM calls
    segmenter: dict  # model and inference settings
    reasoning_cache: dict | None = None  # this run's cache hits and misses
    self_check_images: dict[str, np.ndarray] = field(default_factory=dict)  # crops by store key
    segmenter_labels: np.ndarray | None = None  # the label map before the self-check changed it
    run_id: str | None = None  # its id in the runs database, when it was recorded
    lmm: dict | None = None  # the backend, its generation parameters and call options, when the run used one
    _panoptic: dict = field(default_factory=dict, repr=False, compare=False)  # min_area -> Panoptic, made once

    @property
    def names(self) -> list[str]:
        return self.state.vocabulary.names

    @property
    def classes(self) -> list[ClassSummary]:
        return self.state.report.classes if self.state.report else []

    @property
    def present(self) -> list[str]:
        return self.state.report.present_classes if self.state.report else []

    @property
    def instances(self) -> list:
        """The objects the segmenter found (class, phrase, score, box, COCO RLE mask), best first;
        empty for segmenters that find no instances (dense CLIP)."""
        segmentation = self.state.segmentation
        return list(segmentation.instances or []) if segmentation is not None else []

    def mask(self, name: str) -> np.ndarray:
        return self.labels == self.names.index(name)

    @property
    def unknown_mask(self) -> np.ndarray:
        """Pixels the self-check marked "none of these" (``none_policy="unknown"``)."""
        return self.labels == UNKNOWN_LABEL

    def overlay(self, outlines: bool = False) -> Image.Image:
        """The tinted photo with its legend; ``outlines`` draws each instance's border too."""
        drawn = None
        if outlines and self.instances:
            from openseg_r._support.rle import decode_rle

            index = {name: i for i, name in enumerate(self.names)}
            drawn = [(index[i.class_name], decode_rle(i.mask)) for i in self.instances]
        return overlay_image(self.image, self.labels, self.names, outlines=drawn)

    def panoptic(self, min_area: int = DEFAULT_MIN_AREA):
        """Things as objects and stuff as regions (:mod:`openseg_r.panoptic.build`): from the
        instances when the segmenter found some, else from the label map's connected regions;
        each class's kind from the vocabulary (unmarked classes count as things)."""
        from openseg_r._support.rle import decode_rle
        from openseg_r.panoptic.build import build_panoptic

        if min_area in self._panoptic:  # the web page, its downloads and an agent's answer share one
            return self._panoptic[min_area]
        vocabulary = self.state.vocabulary
        found = None
        if self.instances:
            index = {name: i for i, name in enumerate(self.names)}
            found = [(index[i.class_name], i.score, decode_rle(i.mask)) for i in self.instances]
        kinds, kind_from = self.class_kinds()
        made = build_panoptic(
            self.labels,
            self.confidence,
            self.names,
            kinds,
            background_index=vocabulary.background_index,
            instances=found,
            min_area=min_area,
            kind_from=kind_from,
        )
        self._panoptic[min_area] = made
        return made

    def class_kinds(self) -> tuple[list[str | None], list[str]]:
        """Each class's kind (thing, stuff or None) and where it comes from: the vocabulary
        (a mark, or the built-in's dataset), else generic reasoning's answer, else none
        (``default``: the class counts as a thing)."""
        reasoning = self.state.generic_reasoning or {}
        decided: list[tuple[str | None, str]] = []
        for c in self.state.vocabulary.classes:
            said = reasoning[c.name].kind if c.name in reasoning else None
            if c.kind is not None:
                decided.append((c.kind, "vocabulary"))
            elif said is not None and not c.is_background:
                decided.append((said, "reasoning"))
            else:
                decided.append((None, "default"))
        return [kind for kind, _ in decided], [source for _, source in decided]

    def coco_instances(self, image_id: int | str = 0) -> list[dict]:
        """The instances in the COCO results format (``category_id``: the class's index in the
        vocabulary; ``bbox``: x, y, width, height; ``segmentation``: RLE), best first."""
        index = {name: i for i, name in enumerate(self.names)}
        return [
            {
                "image_id": image_id,
                "category_id": index[i.class_name],
                "category_name": i.class_name,
                "phrase": i.phrase,
                "score": i.score,
                "bbox": [i.box[0], i.box[1], round(i.box[2] - i.box[0], 2), round(i.box[3] - i.box[1], 2)],
                "segmentation": i.mask,
            }
            for i in self.instances
        ]

    def to_json(self) -> dict:
        state = self.state
        return {
            "openseg_r_version": __version__,
            "run_id": self.run_id,
            "image": state.image.model_dump(exclude={"key"}) | {"sha256_key": state.image.key},
            "vocabulary": state.vocabulary.model_dump(),
            "settings": state.settings.model_dump(),
            "segmenter": self.segmenter,
            "lmm": self.lmm,
            "classes": [c.model_dump() for c in self.classes],
            "present_classes": self.present,
            "suppressed_classes": state.segmentation.suppressed_classes if state.segmentation else [],
            "phrases": state.segmentation.phrases if state.segmentation is not None else None,
            "instances": (
                [i.model_dump() for i in state.segmentation.instances]
                if state.segmentation is not None and state.segmentation.instances is not None
                else None
            ),
            "reasoning": {
                "generic": {k: v.model_dump() for k, v in (state.generic_reasoning or {}).items()},
                "image": state.image_reasoning.model_dump() if state.image_reasoning else None,
                "alignment": state.alignment.model_dump() if state.alignment else None,
            },
            "prompts": state.prompts.model_dump() if state.prompts else None,
            "timings": [t.model_dump() for t in state.timings],
            "lmm_calls": [c.model_dump() for c in state.lmm_calls],
            "lmm_usage": {
                "backend": state.lmm_calls[0].backend if state.lmm_calls else None,
                "image_reasoning_mode": state.settings.image_reasoning_mode,
                "calls": len(state.lmm_calls),
                "prompt_tokens": sum(c.usage.prompt_tokens for c in state.lmm_calls),
                "completion_tokens": sum(c.usage.completion_tokens for c in state.lmm_calls),
            },
            "fallbacks": [f.model_dump() for f in state.fallbacks],
            "reasoning_cache": self.reasoning_cache,
            "unknown_pixels": state.report.unknown_pixels if state.report else 0,
            "self_check": self._self_check_json(),
        }

    def _self_check_json(self) -> dict | None:
        check = self.state.self_check
        if check is None:
            return None
        return {
            "stopped": check.stopped,
            "budget_exhausted": check.budget_exhausted,
            "rounds_run": check.round,
            "lmm_calls": check.calls_used,
            "pixels_changed": sum(c.pixels_changed for c in check.changes),
            "rounds": [r.model_dump() for r in check.rounds],
            "answers": [
                a.model_dump() | {"crop_file": f"self_check/{a.region_id}.png"}
                for a in sorted(self.state.region_answers, key=lambda a: region_order(a.round, a.region_id))
            ],
            "changes": [c.model_dump() for c in check.changes],
        }

    def save(self, out_dir: str | Path, instances: bool = False, panoptic: int | None = None) -> dict[str, Path]:
        """Write labels.png, overlay.png and result.json; with ``instances``, instances.json (the
        COCO results format) too, and each instance's outline on the overlay; with ``panoptic``
        (the smallest segment's area in pixels), panoptic.png and panoptic.json (the COCO
        panoptic format) and panoptic_overlay.png (each segment in its own colour, outlined).
        Each file appears whole or not at all."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"labels": out / "labels.png", "overlay": out / "overlay.png", "result": out / "result.json"}
        write_atomically(paths["labels"], lambda f: label_image(self.labels, len(self.names)).save(f, format="PNG"))
        write_atomically(paths["overlay"], lambda f: self.overlay(outlines=instances).save(f, format="PNG"))
        if panoptic is not None:
            self._save_panoptic(out, paths, panoptic)
        if instances:
            paths["instances"] = out / "instances.json"
            found = json.dumps(self.coco_instances(self.state.image.source or 0), ensure_ascii=False)
            write_atomically(paths["instances"], lambda f: f.write(found.encode("utf-8")))
        if self.state.region_answers:
            (out / "self_check").mkdir(exist_ok=True)
        for answer in self.state.region_answers:
            for key, suffix in ((answer.crop_key, ""), (answer.context_key, "-context")):
                if key in self.self_check_images:
                    picture = Image.fromarray(self.self_check_images[key])
                    write_atomically(
                        out / "self_check" / f"{answer.region_id}{suffix}.png", lambda f: picture.save(f, format="PNG")
                    )
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False)
        write_atomically(paths["result"], lambda f: f.write(text.encode("utf-8")))
        return paths

    def _save_panoptic(self, out: Path, paths: dict[str, Path], min_area: int) -> None:
        from openseg_r._support.render import panoptic_overlay_image
        from openseg_r.panoptic.files import ids_to_rgb, panoptic_json

        found = self.panoptic(min_area)
        vocabulary = self.state.vocabulary
        record = panoptic_json(found, self.names, self.class_kinds()[0], "panoptic.png", vocabulary.background_index)
        if vocabulary.kinds_source:
            record["kinds_source"] = vocabulary.kinds_source
        paths["panoptic"], paths["panoptic_json"] = out / "panoptic.png", out / "panoptic.json"
        paths["panoptic_overlay"] = out / "panoptic_overlay.png"
        colours = Image.fromarray(ids_to_rgb(found.ids))
        write_atomically(paths["panoptic"], lambda f: colours.save(f, format="PNG"))
        text = json.dumps(record, indent=2, ensure_ascii=False)
        write_atomically(paths["panoptic_json"], lambda f: f.write(text.encode("utf-8")))
        picture = panoptic_overlay_image(self.image, found.ids, found.segments, self.names)
        write_atomically(paths["panoptic_overlay"], lambda f: picture.save(f, format="PNG"))


@dataclass
class ImageOutcome:
    """One image of :meth:`OpenSegR.segment_many <openseg_r.model.OpenSegR.segment_many>`:
    its result, or the one-line reason it failed (that image only)."""

    index: int  # its place in the input
    source: str | None  # its path or given name; None for unnamed pixels
    result: SegmentationResult | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None
