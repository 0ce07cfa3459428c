"""The one interface every LMM backend implements.

A node builds an :class:`LMMRequest` (prompt, images, pydantic schema) and calls
``backend.ask(request)``. It gets an :class:`LMMReply`: the validated object or
``None``, the raw text, token usage, and a trace record of every attempt. A
backend only has to implement :meth:`BaseLMMBackend.complete` (text in, text out);
parsing, validation and the bounded re-ask live here, once.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
from pydantic import BaseModel

from openseg_r.lmm.parsing import StructuredOutputError, parse_structured
from openseg_r.state import LMMCall, Usage

T = TypeVar("T", bound=BaseModel)

MAX_RAW_TEXT_IN_TRACE = 20_000


@dataclass
class LMMRequest(Generic[T]):
    step: str
    prompt: str
    prompt_version: str
    schema: type[T]
    images: list[np.ndarray] = field(default_factory=list)
    subject: str | None = None
    image_id: str | None = None  # the image file's stem, for replaying upstream per-image files
    # The subject class's synonyms: a replayed upstream file keyed by any of them still answers.
    subject_synonyms: tuple[str, ...] = ()


@dataclass
class LMMReply(Generic[T]):
    value: T | None
    raw_text: str
    usage: Usage
    calls: list[LMMCall]
    error: str | None = None


class BaseLMMBackend(ABC):
    """Base class: subclasses implement :meth:`complete`; :meth:`ask` does the rest.

    ``name`` is the backend kind; ``model_id`` names the model (cache keys use it,
    so two servers running the same model share a cache); ``generation_params``
    are the settings that change answers (also part of cache keys).
    """

    name: str = "lmm"
    model_id: str = "lmm"
    max_attempts: int = 2
    supports_images: bool = True

    @property
    def generation_params(self) -> dict:
        return {}

    @property
    def cache_identity(self) -> str:
        """Model id plus generation parameters: what a cached answer depends on."""
        return f"{self.model_id}|{json.dumps(self.generation_params, sort_keys=True)}"

    @abstractmethod
    def complete(self, request: LMMRequest, feedback: str | None = None) -> tuple[str, Usage]:
        """Return the model's raw text for the request.

        ``feedback`` is set on a re-ask: the validation error of the previous answer.
        """

    def ask(self, request: LMMRequest[T], max_attempts: int | None = None) -> LMMReply[T]:
        """``max_attempts`` lowers the backend's own bound for this request (a call budget)."""
        attempts = max(1, self.max_attempts if max_attempts is None else min(max_attempts, self.max_attempts))
        calls: list[LMMCall] = []
        usage = Usage()
        feedback: str | None = None
        raw = ""
        error = "no attempt was made"
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                raw, call_usage = self.complete(request, feedback)
                raw = raw if isinstance(raw, str) else str(raw)
            except Exception as exc:  # a backend failure is recorded, never raised into the graph
                error = f"backend error: {type(exc).__name__}: {exc}"
                calls.append(self._record(request, attempt, False, error, "", Usage(), started))
                continue
            usage = Usage(
                prompt_tokens=usage.prompt_tokens + call_usage.prompt_tokens,
                completion_tokens=usage.completion_tokens + call_usage.completion_tokens,
            )
            try:
                value = parse_structured(raw, request.schema, request.subject)
            except StructuredOutputError as exc:
                error = str(exc)
                feedback = error
                calls.append(self._record(request, attempt, False, error, raw, call_usage, started))
                continue
            calls.append(self._record(request, attempt, True, None, raw, call_usage, started))
            return LMMReply(value=value, raw_text=raw, usage=usage, calls=calls)
        return LMMReply(value=None, raw_text=raw, usage=usage, calls=calls, error=error)

    def _record(self, request, attempt, ok, error, raw, usage, started) -> LMMCall:
        return LMMCall(
            step=request.step,
            subject=request.subject,
            backend=f"{self.name}:{self.model_id}" if self.model_id != self.name else self.name,
            prompt_version=request.prompt_version,
            attempt=attempt,
            ok=ok,
            error=error,
            raw_text=raw[:MAX_RAW_TEXT_IN_TRACE],
            usage=usage,
            seconds=round(time.perf_counter() - started, 6),
        )


class NoLMM(BaseLMMBackend):
    """``none``: there is no LMM. Reasoning nodes fall back to bare class names."""

    name = "none"
    model_id = "none"
    max_attempts = 1

    def complete(self, request: LMMRequest, feedback: str | None = None) -> tuple[str, Usage]:
        raise RuntimeError("no LMM backend is configured (lmm spec 'none')")


def reask_text(prompt: str, feedback: str | None) -> str:
    """The prompt for a re-ask: the original question plus why the last answer failed."""
    if not feedback:
        return prompt
    return (
        f"{prompt}\n\nYour previous answer could not be used: {feedback[:500]}\n"
        "Answer again with only the JSON object, exactly in the form asked."
    )
