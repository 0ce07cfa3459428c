"""Generic reasoning (docs/design.md §1.1): a coarse-to-fine chain per class, image-independent, cached."""

from __future__ import annotations

import contextvars
import json
from concurrent.futures import ThreadPoolExecutor

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.config.settings import Settings
from openseg_r.lmm.base import LMMRequest, ask_in_run
from openseg_r.lmm.health import unavailable_fallback
from openseg_r.nodes.context import OpenSegContext
from openseg_r.prompts.reasoning import GENERIC_REASONING
from openseg_r.schemas import ClassReasoning, Fallback, LMMCall, Vocabulary, dropped_attribute_fallbacks

STEP = "generic_reasoning"


class GenericReasoningInput(BaseModel):
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)


class GenericReasoningOutput(BaseModel):
    generic_reasoning: dict[str, ClassReasoning]
    lmm_calls: list[LMMCall] = Field(default_factory=list)
    fallbacks: list[Fallback] = Field(default_factory=list)


def generic_cache_key(lmm, class_name: str) -> dict:
    return {"model": lmm.cache_identity, "prompt_version": GENERIC_REASONING.version, "subject": class_name}


def generic_reasoning(state: GenericReasoningInput, runtime: Runtime[OpenSegContext]) -> GenericReasoningOutput:
    """Ask the LMM about every non-background class not yet in the reasoning cache.

    A class whose answer never validates falls back to its bare name (no
    attributes); the fallback is recorded and the failure is not cached. When the
    backend is unavailable (unreachable, key refused), the run asks nothing more and
    records one fallback naming the cause, not one per class.
    """
    ctx = runtime.context
    lmm = ctx.lmm
    names = [c.name for c in state.vocabulary.classes if not c.is_background]
    reasoning: dict[str, ClassReasoning] = {}
    to_ask = []
    for name in names:
        cached = ctx.reasoning_cache.get("generic", generic_cache_key(lmm, name))
        if cached is not None:
            reasoning[name] = ClassReasoning.model_validate(cached)
        else:
            to_ask.append(name)

    synonyms = {c.name: tuple(q for q in c.queries if q != c.name) for c in state.vocabulary.classes}

    def ask(name: str):
        """The LMM's answer for one class, asked once however many runs want it at the same
        time (``ctx.flights``); a valid answer is cached before the waiting runs read it."""
        key = generic_cache_key(lmm, name)
        request = LMMRequest(
            step=STEP,
            subject=name,
            subject_synonyms=synonyms.get(name, ()),
            prompt=GENERIC_REASONING.render(class_name=name),
            prompt_version=GENERIC_REASONING.version,
            schema=ClassReasoning,
        )

        def leader():
            reply = ask_in_run(lmm, request, ctx.lmm_breaker, ctx.lmm_slots)
            if reply.value is not None:
                answer = reply.value.model_copy(update={"name": name})
                ctx.reasoning_cache.put("generic", key, answer.model_dump())
            return reply

        reply, shared = ctx.flights.run(
            json.dumps(["generic", key], sort_keys=True), leader, keep=lambda reply: reply.value is not None
        )
        return name, reply, shared

    calls: list[LMMCall] = []
    fallbacks: list[Fallback] = []
    with ThreadPoolExecutor(max_workers=max(1, ctx.max_concurrent_lmm_calls)) as pool:
        # each call in this run's context: its cancel token reaches the request (a time limit, stop())
        asked = [pool.submit(contextvars.copy_context().run, ask, name) for name in to_ask]
        for done, (name, reply, shared) in enumerate((future.result() for future in asked), start=1):
            runtime.stream_writer({"event": "progress", "node": STEP, "done": done, "total": len(to_ask)})
            if not shared:  # a run that waited for another's call made none itself
                calls.extend(reply.calls)
            if reply.value is None:
                reasoning[name] = ClassReasoning(name=name)
                unavailable = getattr(reply, "unavailable", None)
                if unavailable:  # another run's call may have found it: this run stops asking too
                    ctx.lmm_breaker.trip(unavailable)
                    if ctx.lmm_breaker.claim_report():
                        fallbacks.append(unavailable_fallback(STEP, ctx.lmm_breaker.cause))
                    continue
                fallbacks.append(
                    Fallback(step=STEP, subject=name, reason=reply.error or "no answer", used="bare class name")
                )
                continue
            reasoning[name] = reply.value.model_copy(update={"name": name})
            if not shared:
                fallbacks += dropped_attribute_fallbacks(STEP, reply.value, subject=name)
    ordered = {name: reasoning[name] for name in names}
    return GenericReasoningOutput(generic_reasoning=ordered, lmm_calls=calls, fallbacks=fallbacks)


def reason_generic_ahead(vocabulary: Vocabulary, context: OpenSegContext, on_progress=None) -> list[str]:
    """Fill the context's reasoning cache with the generic reasoning of every class, outside
    any run (``openseg-r reason generic``, the Ray driver before it ships the answers to its
    actors). Classes go a few at a time (the context's LMM concurrency), so an interrupted
    call resumes from the cache; ``on_progress(classes_done)`` follows them.

    Returns the classes whose answer failed (bare names will be used). Raises
    :class:`~openseg_r.errors.ReasoningUnavailableError` when the backend is unusable."""
    from openseg_r.errors import ReasoningUnavailableError

    classes = [c for c in vocabulary.classes if not c.is_background]
    failed: list[str] = []
    batch = max(1, context.max_concurrent_lmm_calls)
    runtime = Runtime(context=context)
    for start in range(0, len(classes), batch):
        part = Vocabulary(name=vocabulary.name, classes=classes[start : start + batch])
        out = generic_reasoning(GenericReasoningInput(vocabulary=part), runtime)
        failed += [f.subject for f in out.fallbacks if f.subject]
        if on_progress is not None:
            on_progress(len(part.classes))
        if context.lmm_breaker.cause:  # the backend is unusable: asking the rest would fail too
            raise ReasoningUnavailableError(
                f"{context.lmm_breaker.cause}; the classes reasoned before it are cached: run again once it answers",
                unavailable=True,
            )
    return failed


def cached_generic_entries(vocabulary: Vocabulary, context: OpenSegContext) -> list[dict]:
    """The cache entries ``{"kind", "key", "value"}`` of the vocabulary's classes that have
    generic reasoning: what a model elsewhere (a Ray actor) seeds its cache with."""
    entries = []
    for item in vocabulary.classes:
        if item.is_background:
            continue
        key = generic_cache_key(context.lmm, item.name)
        value = context.reasoning_cache.get("generic", key)
        if value is not None:
            entries.append({"kind": "generic", "key": key, "value": value})
    return entries
