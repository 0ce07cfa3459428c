"""The one interface every LMM backend implements.

A node builds an :class:`LMMRequest` (prompt, images, pydantic schema) and calls
``backend.ask(request)``. It gets an :class:`LMMReply`: the validated object or
``None``, the raw text, token usage, and a trace record of every attempt. A
backend only has to implement :meth:`BaseLMMBackend.complete` (text in, text out);
parsing, validation and the bounded re-ask live here, once.

An error that says the backend itself is unusable (unreachable, a rejected key, no such
model; see :mod:`openseg_r.lmm.health`) is not re-asked: the reply carries it in
``unavailable``, and :func:`ask_in_run` stops the run from asking again.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
from pydantic import BaseModel

from openseg_r._support.cancel import Cancelled
from openseg_r.config.settings import LMMOptions
from openseg_r.lmm.health import (
    BackendHealth,
    RequestUnsupported,
    RunBreaker,
    unavailable_cause,
    unavailable_message,
)
from openseg_r.lmm.parsing import StructuredOutputError, parse_structured
from openseg_r.schemas import LMMCall, Usage

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
    # Set when the backend is unusable (unreachable, key refused, no such model): the cause,
    # "LMM backend unreachable: connection refused at URL". No later request would do better.
    unavailable: str | None = None


def backend_label(lmm) -> str:
    """How traces, ``result.json`` and ``runs list`` name a backend: its kind and model,
    ``openai:gpt-4o``, with the kind once where the model id already starts with it
    (``scripted:658da4d8edfa``, not ``scripted:scripted:658da4d8edfa``)."""
    name, model = lmm.name, lmm.model_id
    return model if model == name or model.startswith(f"{name}:") else f"{name}:{model}"


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
    def location(self) -> str | None:
        """Where the backend is (a server's URL), for messages; None for in-process backends."""
        return None

    def probe(self) -> str | None:
        """A cheap check that the backend can be reached, run before the first request and
        after a failure: the cause when it cannot (see :func:`unavailable_cause`), else
        None. In-process backends have nothing to check."""
        return None

    def apply_options(self, options: LMMOptions) -> None:
        """Take the options that were set (see :class:`~openseg_r.config.settings.LMMOptions`); this
        base takes ``max_attempts``, backends that call a model take the rest."""
        if options.max_attempts is not None:
            self.max_attempts = options.max_attempts

    def effective_options(self) -> dict:
        """The call options in force, for the trace (``result.json``, recorded runs)."""
        return {"max_attempts": self.max_attempts}

    def describe(self) -> dict:
        """What answered: recorded with each result."""
        return {
            "backend": backend_label(self),
            "spec": getattr(self, "spec", None),
            "generation_params": self.generation_params,
            "options": self.effective_options(),
        }

    @property
    def health(self) -> BackendHealth:
        """Shared by every run that uses this backend (see :mod:`openseg_r.lmm.health`)."""
        health = self.__dict__.get("_health")
        if health is None:
            with _HEALTH_LOCK:
                health = self.__dict__.setdefault("_health", BackendHealth())
        return health

    def _probe_message(self) -> str | None:
        cause = self.probe()
        return None if cause is None else unavailable_message(cause, self.location)

    def unavailable(self, exc: BaseException) -> str | None:
        """The one-line message when ``exc`` says this backend is unusable, else None."""
        cause = unavailable_cause(exc)
        return None if cause is None else unavailable_message(cause, self.location)

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
        started = time.perf_counter()
        down, checked = self.health.admit(self._probe_message)
        if down is not None:
            # The caller that checked records its one attempt; those that waited made none.
            calls = [self._record(request, 1, False, down, "", Usage(), started)] if checked else []
            return LMMReply(value=None, raw_text="", usage=usage, calls=calls, error=down, unavailable=down)
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                raw, call_usage = self.complete(request, feedback)
                raw = raw if isinstance(raw, str) else str(raw)
            except Cancelled:  # the work was given up (a time limit, Ctrl-C): no further attempt
                raise
            except Exception as exc:  # a backend failure is recorded, never raised into the graph
                message = self.unavailable(exc)
                if message is not None:  # asking again, or asking anything else, would fail the same way
                    self.health.mark_down(message)
                    calls.append(self._record(request, attempt, False, message, "", Usage(), started))
                    return LMMReply(
                        value=None, raw_text="", usage=usage, calls=calls, error=message, unavailable=message
                    )
                error = f"backend error: {type(exc).__name__}: {exc}"
                calls.append(self._record(request, attempt, False, error, "", Usage(), started))
                if isinstance(exc, RequestUnsupported):
                    break
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
            backend=backend_label(self),
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


def ask_in_run(
    lmm, request: LMMRequest[T], breaker: RunBreaker, slots=None, max_attempts: int | None = None
) -> LMMReply[T]:
    """``lmm.ask(request)`` within one run: nothing is asked once the run's breaker has
    tripped (the reply then says why, with no call), and a reply that finds the backend
    unavailable trips it. ``slots`` (a semaphore) bounds the calls in flight."""
    if breaker.cause is None:
        with slots if slots is not None else _NO_SLOT:
            if breaker.cause is None:
                reply = lmm.ask(request) if max_attempts is None else lmm.ask(request, max_attempts=max_attempts)
                cause = getattr(reply, "unavailable", None)
                if cause:
                    breaker.trip(cause)
                return reply
    return LMMReply(value=None, raw_text="", usage=Usage(), calls=[], error=breaker.cause, unavailable=breaker.cause)


class _NoSlot:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


_NO_SLOT = _NoSlot()
_HEALTH_LOCK = threading.Lock()


def reask_text(prompt: str, feedback: str | None) -> str:
    """The prompt for a re-ask: the original question plus why the last answer failed."""
    if not feedback:
        return prompt
    return (
        f"{prompt}\n\nYour previous answer could not be used: {feedback[:500]}\n"
        "Answer again with only the JSON object, exactly in the form asked."
    )
