"""Record every LMM call to JSONL, and replay recorded or upstream answers offline.

A request's fingerprint is (step, subject, prompt version, SHA-256 of the prompt,
SHA-256 of each image, the re-ask feedback). ``RecordingLMM`` wraps any backend
and appends one JSON line per call. ``ReplayLMM`` answers from such a file, so a
run can be reproduced exactly with no model; it also reads the upstream OpenSeg-R
files (a generic-reasoning JSON like ``pc59_class_reason.json``, or a folder of
per-image ``<image id>.json`` files). A request with no recorded answer raises,
which the node turns into a recorded fallback.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from threading import Lock

import numpy as np

from openseg_r.config.settings import LMMOptions
from openseg_r.errors import ConfigError
from openseg_r.lmm.base import BaseLMMBackend, LMMRequest
from openseg_r.lmm.upstream import load_generic_file, load_image_file
from openseg_r.schemas import Usage


def fingerprint(request: LMMRequest, feedback: str | None) -> str:
    digest = hashlib.sha256()
    for part in (request.step, request.subject or "", request.prompt_version, request.prompt, feedback or ""):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    for image in request.images:
        digest.update(image_hash(image).encode())
    return digest.hexdigest()


def image_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class RecordingLMM(BaseLMMBackend):
    """Wraps a backend and appends every call (successful or not) to a JSONL file."""

    def __init__(self, inner: BaseLMMBackend, path: str | Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.model_id = inner.name, inner.model_id
        self.max_attempts, self.supports_images = inner.max_attempts, inner.supports_images
        self._lock = Lock()

    @property
    def generation_params(self) -> dict:
        return self.inner.generation_params

    @property
    def location(self) -> str | None:
        return self.inner.location

    def probe(self) -> str | None:
        return self.inner.probe()

    def apply_options(self, options: LMMOptions) -> None:
        self.inner.apply_options(options)
        self.max_attempts = self.inner.max_attempts

    def effective_options(self) -> dict:
        return self.inner.effective_options()

    def complete(self, request: LMMRequest, feedback: str | None = None) -> tuple[str, Usage]:
        record = {
            "fingerprint": fingerprint(request, feedback),
            "backend": self.name,
            "model_id": self.model_id,
            "generation_params": self.generation_params,
            "step": request.step,
            "subject": request.subject,
            "prompt_version": request.prompt_version,
            "feedback": feedback,
        }
        try:
            text, usage = self.inner.complete(request, feedback)
        except Exception as exc:
            self._append(record | {"error": f"{type(exc).__name__}: {exc}"})
            raise
        self._append(record | {"raw_text": text, "usage": usage.model_dump()})
        return text, usage

    def _append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class ReplayLMM(BaseLMMBackend):
    name = "replay"

    def __init__(self, source: str | Path, max_attempts: int = 2) -> None:
        self.source = Path(source)
        self.max_attempts = max_attempts
        self.model_id = f"replay:{self.source.name}"
        self._answers: dict[str, list[tuple[str, Usage]]] = defaultdict(list)
        self._positions: dict[str, int] = defaultdict(int)
        self._generic: dict[str, dict] = {}
        self._image_dir: Path | None = None
        self._recorded = self.source.suffix == ".jsonl"
        self._lock = Lock()
        if not self.source.exists():
            raise ConfigError(f"replay source not found: {self.source}")
        if self.source.is_dir():
            self._image_dir = self.source
        elif self._recorded:
            self._load_jsonl()
        else:
            self._generic = load_generic_file(self.source)

    def _load_jsonl(self) -> None:
        for number, line in enumerate(self.source.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{self.source}:{number}: not a JSON line") from None
            if "raw_text" not in record:
                continue  # a recorded failure: replaying it would add nothing
            self.model_id = record.get("model_id", self.model_id)
            usage = Usage.model_validate(record.get("usage") or {})
            self._answers[record["fingerprint"]].append((str(record["raw_text"]), usage))

    def complete(self, request: LMMRequest, feedback: str | None = None) -> tuple[str, Usage]:
        if self._recorded:
            key = fingerprint(request, feedback)
            with self._lock:
                answers = self._answers.get(key)
                if not answers:
                    raise LookupError(
                        f"no recorded answer for this {request.step} request ({request.subject or 'image'})"
                    )
                position = self._positions[key]
                self._positions[key] = position + 1
            return answers[min(position, len(answers) - 1)]
        if request.step == "generic_reasoning" and self._generic:
            keys = [request.subject or "", *request.subject_synonyms]
            entry = next((self._generic[key] for key in keys if key in self._generic), None)
            if entry is None:
                raise LookupError(f"the upstream file has no reasoning for {request.subject!r}")
            return json.dumps({k: v for k, v in entry.items() if k != "raw_response"}), Usage()
        if request.step == "image_reasoning" and self._image_dir is not None and request.image_id:
            path = self._image_dir / f"{request.image_id}.json"
            if not path.is_file():
                raise LookupError(f"no upstream reasoning file {path.name}")
            return json.dumps(load_image_file(path)), Usage()
        raise LookupError(f"this replay source has no answers for {request.step}")
