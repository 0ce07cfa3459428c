"""``scripted``: answers from a dict or a JSON file, for tests and demos.

Script layout::

    {
      "generic_reasoning": {"cat": {...} | "raw text", ...},
      "image_reasoning": {...} | "raw text" | [answer for call 1, answer for call 2, ...],
      "self_check": {"choice": ...} | {"r1.1": {...}, "r2.1": "raw text", "*": {...}}
    }

An answer is a JSON value (sent as JSON text) or a string (sent verbatim, so a
test can script malformed answers). A step keyed by subject looks the subject up;
a list is consumed one answer per call, the last one repeating. Self-check answers
are one answer for every region, or keyed by region id ("r<round>.<rank>") with
"*" as the default. A missing answer
is an empty string, which the normal validation turns into a stated fallback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from threading import Lock

from openseg_r.errors import ConfigError
from openseg_r.lmm.base import BaseLMMBackend, LMMRequest
from openseg_r.schemas import Usage

SUBJECT_KEYED_STEPS = {"generic_reasoning"}


class ScriptedLMM(BaseLMMBackend):
    name = "scripted"
    model_id = "scripted"

    def __init__(self, script: dict | str | Path, max_attempts: int = 2) -> None:
        if isinstance(script, (str, Path)):
            path = Path(script)
            try:
                script = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"scripted LMM file not found: {path}") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"scripted LMM file is not valid JSON: {path} ({exc})") from None
        if not isinstance(script, dict):
            raise ConfigError("a scripted LMM script must be a JSON object keyed by step name")
        self.script = script
        # Different scripts are different "models": their answers must never share a cache entry.
        digest = hashlib.sha256(json.dumps(script, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        self.model_id = f"scripted:{digest[:12]}"
        self.max_attempts = max_attempts
        self.requests: list[LMMRequest] = []
        self._positions: dict[str, int] = {}
        self._lock = Lock()

    def complete(self, request: LMMRequest, feedback: str | None = None) -> tuple[str, Usage]:
        with self._lock:
            self.requests.append(request)
            answer = self._answer_for(request)
        text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        return text, Usage(prompt_tokens=len(request.prompt.split()), completion_tokens=len(text.split()))

    def _answer_for(self, request: LMMRequest) -> object:
        entry = self.script.get(request.step, "")
        if request.step in SUBJECT_KEYED_STEPS and isinstance(entry, dict):
            return entry.get(request.subject or "", "")
        if request.step == "self_check" and isinstance(entry, dict) and "choice" not in entry:
            return entry.get(request.subject or "", entry.get("*", ""))
        if isinstance(entry, list):
            if not entry:
                return ""
            position = self._positions.get(request.step, 0)
            self._positions[request.step] = position + 1
            return entry[min(position, len(entry) - 1)]
        return entry
