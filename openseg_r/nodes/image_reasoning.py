"""Image reasoning (docs/design.md §1.2): describe the image, find the classes present, and
reason about each one as it looks here.

``single`` (default): one structured LMM call returns everything.
``chain``: the paper's three calls: description, then candidate search, then
reasons for the candidates. Earlier answers enter later prompts only quoted and
bounded, and only names that match the vocabulary are asked about, so an answer
can neither grow the vocabulary nor inject instructions.
"""

from __future__ import annotations

import hashlib
import json

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.config.settings import Settings
from openseg_r.lmm.base import LMMRequest, ask_in_run
from openseg_r.lmm.health import unavailable_fallback
from openseg_r.nodes.context import OpenSegContext
from openseg_r.nodes.matching import NameMatcher, normalise_name
from openseg_r.prompts.reasoning import (
    CANDIDATE_REASONING,
    CANDIDATE_SEARCH,
    IMAGE_DESCRIPTION,
    IMAGE_REASONING_SINGLE,
    class_list_text,
    quoted,
)
from openseg_r.schemas import (
    CandidateReasons,
    CandidateSearch,
    ClassReasoning,
    Fallback,
    ImageDescription,
    ImageReasoning,
    ImageRef,
    LMMCall,
    Vocabulary,
    dropped_attribute_fallbacks,
)

STEP = "image_reasoning"
NO_FILTER = "no class filtering; generic attributes"


class ImageReasoningInput(BaseModel):
    image: ImageRef
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)


class ImageReasoningOutput(BaseModel):
    image_reasoning: ImageReasoning | None = None
    lmm_calls: list[LMMCall] = Field(default_factory=list)
    fallbacks: list[Fallback] = Field(default_factory=list)


def image_cache_key(lmm, image: ImageRef, names: list[str], mode: str) -> dict:
    versions = (
        IMAGE_REASONING_SINGLE.version
        if mode == "single"
        else "+".join(p.version for p in (IMAGE_DESCRIPTION, CANDIDATE_SEARCH, CANDIDATE_REASONING))
    )
    classes = hashlib.sha256(json.dumps(names, ensure_ascii=False).encode()).hexdigest()[:16]
    return {
        "model": lmm.cache_identity,
        "prompt_version": versions,
        "subject": image.key,
        "classes": classes,
        "mode": mode,
    }


def image_reasoning(state: ImageReasoningInput, runtime: Runtime[OpenSegContext]) -> ImageReasoningOutput:
    """On an answer that never validates, image reasoning is None: no class filtering."""
    ctx = runtime.context
    if not state.settings.use_image_reasoning:  # asked for: generic reasoning only
        return ImageReasoningOutput(image_reasoning=None)
    names = [c.name for c in state.vocabulary.classes if not c.is_background]
    mode = state.settings.image_reasoning_mode
    key = image_cache_key(ctx.lmm, state.image, names, mode)
    cached = ctx.reasoning_cache.get("image", key)
    if cached is not None:
        return ImageReasoningOutput(image_reasoning=ImageReasoning.model_validate(cached))
    ask = _Asker(ctx, state)
    result = _single(ask, names) if mode == "single" else _chain(ask, state.vocabulary, names)
    if result is not None and not ask.degraded:
        ctx.reasoning_cache.put("image", key, result.model_dump())
    dropped = [f for c in (result.candidates if result else []) for f in dropped_attribute_fallbacks(STEP, c)]
    return ImageReasoningOutput(image_reasoning=result, lmm_calls=ask.calls, fallbacks=ask.fallbacks + dropped)


class _Asker:
    """Asks one question about the image and collects the trace. ``degraded`` is set when
    any answer was missing (such a result is not cached)."""

    def __init__(self, ctx: OpenSegContext, state: ImageReasoningInput) -> None:
        self.ctx, self.state = ctx, state
        self.calls: list[LMMCall] = []
        self.fallbacks: list[Fallback] = []
        self.degraded = False

    def __call__(self, prompt, schema, text: str, used: str):
        source = self.state.image.source
        request = LMMRequest(
            step=STEP,
            prompt=text,
            prompt_version=prompt.version,
            schema=schema,
            images=[self.ctx.store.get(self.state.image.key)],
            image_id=source.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0] if source else None,
        )
        breaker = self.ctx.lmm_breaker
        reply = ask_in_run(self.ctx.lmm, request, breaker, self.ctx.lmm_slots)
        self.calls.extend(reply.calls)
        if reply.value is None:
            self.degraded = True
            if getattr(reply, "unavailable", None):  # one fallback per run names the cause
                if breaker.claim_report():
                    self.fallbacks.append(unavailable_fallback(STEP, breaker.cause))
            else:
                self.fallbacks.append(
                    Fallback(step=STEP, subject=prompt.version, reason=reply.error or "no answer", used=used)
                )
        return reply.value


def _single(ask: _Asker, names: list[str]) -> ImageReasoning | None:
    text = IMAGE_REASONING_SINGLE.render(class_list=class_list_text(names))
    return ask(IMAGE_REASONING_SINGLE, ImageReasoning, text, NO_FILTER)


def _chain(ask: _Asker, vocabulary: Vocabulary, names: list[str]) -> ImageReasoning | None:
    described = ask(IMAGE_DESCRIPTION, ImageDescription, IMAGE_DESCRIPTION.render(), "no description")
    description = described.description if described else ""
    search_text = CANDIDATE_SEARCH.render(description=quoted(description), class_list=class_list_text(names))
    found = ask(CANDIDATE_SEARCH, CandidateSearch, search_text, NO_FILTER)
    if found is None:
        return None
    present = NameMatcher(c for c in vocabulary.classes if not c.is_background).known_names(found.present)
    if not present:
        return ImageReasoning(description=description, candidates=[ClassReasoning(name=n) for n in found.present])
    reasons_text = CANDIDATE_REASONING.render(class_list=class_list_text(present))
    reasons = ask(CANDIDATE_REASONING, CandidateReasons, reasons_text, "candidates without image attributes")
    by_name = {normalise_name(c.name): c for c in (reasons.candidates if reasons else [])}
    candidates = [by_name.get(normalise_name(name)) or ClassReasoning(name=name) for name in present]
    return ImageReasoning(
        description=description, candidates=[c.model_copy(update={"name": n}) for c, n in zip(candidates, present)]
    )
