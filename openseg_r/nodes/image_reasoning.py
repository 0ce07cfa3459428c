"""Image reasoning (DESIGN §2.2): describe the image, find the classes present, and
reason about each one as it looks here. ``single`` mode: one structured LMM call."""

from __future__ import annotations

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.graph.context import OpenSegContext
from openseg_r.lmm.base import LMMRequest
from openseg_r.prompts.reasoning import IMAGE_REASONING_SINGLE, class_list_text
from openseg_r.state import Fallback, ImageReasoning, ImageRef, LMMCall, Settings, Vocabulary

STEP = "image_reasoning"


class ImageReasoningInput(BaseModel):
    image: ImageRef
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)


class ImageReasoningOutput(BaseModel):
    image_reasoning: ImageReasoning | None = None
    lmm_calls: list[LMMCall] = Field(default_factory=list)
    fallbacks: list[Fallback] = Field(default_factory=list)


def image_reasoning(state: ImageReasoningInput, runtime: Runtime[OpenSegContext]) -> ImageReasoningOutput:
    """On an answer that never validates, image reasoning is None: no class filtering."""
    ctx = runtime.context
    names = [c.name for c in state.vocabulary.classes if not c.is_background]
    request = LMMRequest(
        step=STEP,
        prompt=IMAGE_REASONING_SINGLE.render(class_list=class_list_text(names)),
        prompt_version=IMAGE_REASONING_SINGLE.version,
        schema=ImageReasoning,
        images=[ctx.store.get(state.image.key)],
    )
    reply = ctx.lmm.ask(request)
    if reply.value is None:
        fallback = Fallback(step=STEP, reason=reply.error or "no answer", used="no class filtering; generic attributes")
        return ImageReasoningOutput(image_reasoning=None, lmm_calls=reply.calls, fallbacks=[fallback])
    return ImageReasoningOutput(image_reasoning=reply.value, lmm_calls=reply.calls)
