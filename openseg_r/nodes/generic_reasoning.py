"""Generic reasoning (DESIGN §2.1): a coarse-to-fine chain per class, image-independent, cached."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.graph.context import OpenSegContext
from openseg_r.lmm.base import LMMRequest
from openseg_r.prompts.reasoning import GENERIC_REASONING
from openseg_r.state import ClassReasoning, Fallback, LMMCall, Settings, Vocabulary

STEP = "generic_reasoning"


class GenericReasoningInput(BaseModel):
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)


class GenericReasoningOutput(BaseModel):
    generic_reasoning: dict[str, ClassReasoning]
    lmm_calls: list[LMMCall] = Field(default_factory=list)
    fallbacks: list[Fallback] = Field(default_factory=list)


def generic_reasoning(state: GenericReasoningInput, runtime: Runtime[OpenSegContext]) -> GenericReasoningOutput:
    """Ask the LMM about every non-background class not yet in the cache.

    A class whose answer never validates falls back to its bare name (no
    attributes); the fallback is recorded and the failure is not cached.
    """
    ctx = runtime.context
    lmm = ctx.lmm
    names = [c.name for c in state.vocabulary.classes if not c.is_background]
    key = lambda name: (lmm.name, GENERIC_REASONING.version, name)  # noqa: E731
    to_ask = [name for name in names if key(name) not in ctx.reasoning_cache]

    def ask(name: str):
        request = LMMRequest(
            step=STEP,
            subject=name,
            prompt=GENERIC_REASONING.render(class_name=name),
            prompt_version=GENERIC_REASONING.version,
            schema=ClassReasoning,
        )
        return name, lmm.ask(request)

    calls: list[LMMCall] = []
    fallbacks: list[Fallback] = []
    with ThreadPoolExecutor(max_workers=max(1, ctx.max_concurrent_lmm_calls)) as pool:
        for name, reply in pool.map(ask, to_ask):
            calls.extend(reply.calls)
            if reply.value is None:
                fallbacks.append(Fallback(step=STEP, subject=name, reason=reply.error or "no answer", used="bare class name"))
                continue
            ctx.reasoning_cache[key(name)] = reply.value.model_copy(update={"name": name})
    reasoning = {
        name: ctx.reasoning_cache.get(key(name)) or ClassReasoning(name=name) for name in names
    }
    return GenericReasoningOutput(generic_reasoning=reasoning, lmm_calls=calls, fallbacks=fallbacks)
