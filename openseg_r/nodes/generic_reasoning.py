"""Generic reasoning (docs/design.md §1.1): a coarse-to-fine chain per class, image-independent, cached."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.context import OpenSegContext
from openseg_r.lmm.base import LMMRequest, ask_in_run
from openseg_r.lmm.health import unavailable_fallback
from openseg_r.prompts.reasoning import GENERIC_REASONING
from openseg_r.state import ClassReasoning, Fallback, LMMCall, Settings, Vocabulary, dropped_attribute_fallbacks

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

        reply, shared = ctx.flights.run(json.dumps(["generic", key], sort_keys=True), leader,
                                        keep=lambda reply: reply.value is not None)
        return name, reply, shared

    calls: list[LMMCall] = []
    fallbacks: list[Fallback] = []
    with ThreadPoolExecutor(max_workers=max(1, ctx.max_concurrent_lmm_calls)) as pool:
        for done, (name, reply, shared) in enumerate(pool.map(ask, to_ask), start=1):
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
