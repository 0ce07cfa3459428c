"""Class alignment (docs/design.md §1.3): map the names an LMM returned onto the vocabulary.

1. exact match against any synonym; 2. match after normalisation (case,
punctuation, whitespace, simple plurals); 3. nearest text embedding above
``settings.align_threshold``; 4. otherwise the name is dropped. Every decision
is recorded. The matching itself is :class:`openseg_r.nodes.matching.NameMatcher`.
"""

from __future__ import annotations

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.config.settings import Settings
from openseg_r.nodes.context import OpenSegContext
from openseg_r.nodes.matching import NameMatcher
from openseg_r.schemas import ClassAlignment, Fallback, ImageReasoning, Vocabulary

STEP = "class_alignment"


class ClassAlignmentInput(BaseModel):
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    image_reasoning: ImageReasoning | None = None


class ClassAlignmentOutput(BaseModel):
    alignment: ClassAlignment
    fallbacks: list[Fallback] = Field(default_factory=list)


def class_alignment(state: ClassAlignmentInput, runtime: Runtime[OpenSegContext]) -> ClassAlignmentOutput:
    if state.image_reasoning is None:
        return ClassAlignmentOutput(alignment=ClassAlignment(present=None))
    matcher = NameMatcher(c for c in state.vocabulary.classes if not c.is_background)
    candidates = state.image_reasoning.candidates
    decisions = matcher.match(
        [candidate.name for candidate in candidates], runtime.context.name_embedder(), state.settings.align_threshold
    )
    present: list[str] = []
    attributes: dict[str, list[str]] = {}
    for decision, candidate in zip(decisions, candidates):
        if decision.matched is None:
            continue
        if decision.matched not in present:
            present.append(decision.matched)
        if candidate.attributes and decision.matched not in attributes:
            attributes[decision.matched] = candidate.attributes
    order = {c.name: i for i, c in enumerate(state.vocabulary.classes)}
    present.sort(key=order.__getitem__)
    fallbacks = []
    if not present:
        fallbacks.append(
            Fallback(step=STEP, reason="image reasoning named no class of the vocabulary", used="no class filtering")
        )
    alignment = ClassAlignment(present=present or None, image_attributes=attributes, decisions=decisions)
    return ClassAlignmentOutput(alignment=alignment, fallbacks=fallbacks)
