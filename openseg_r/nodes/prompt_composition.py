"""Prompt composition (docs/design.md §1.4): choose each class's attribute slots.

Image attributes if image reasoning found the class, else its generic attributes,
else none. The first ``n_attributes`` fill the slots; a class with fewer
attributes fills the rest with its bare name, so every class has the same slots.
With reasoning off every class has one bare slot: the baseline.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from openseg_r.config.settings import Settings
from openseg_r.schemas import ClassAlignment, ClassPrompts, ClassReasoning, PromptSet, Vocabulary


class PromptCompositionInput(BaseModel):
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    generic_reasoning: dict[str, ClassReasoning] | None = None
    alignment: ClassAlignment | None = None


class PromptCompositionOutput(BaseModel):
    prompts: PromptSet


def prompt_composition(state: PromptCompositionInput) -> PromptCompositionOutput:
    settings = state.settings
    generic = state.generic_reasoning or {}
    image_attributes = state.alignment.image_attributes if state.alignment else {}
    slot_count = settings.n_attributes + (1 if settings.include_bare_slot else 0) if settings.reasoning else 1
    classes = []
    for cls in state.vocabulary.classes:
        attributes: list[str] = []
        source = "bare"
        if settings.reasoning and not cls.is_background:
            if image_attributes.get(cls.name):
                attributes, source = image_attributes[cls.name], "image"
            elif cls.name in generic and generic[cls.name].attributes:
                attributes, source = generic[cls.name].attributes, "generic"
        slots: list[str | None] = list(attributes[: settings.n_attributes]) if settings.reasoning else []
        slots += [None] * (slot_count - len(slots))
        classes.append(ClassPrompts(name=cls.name, queries=cls.queries, slots=slots, source=source))
    return PromptCompositionOutput(
        prompts=PromptSet(templates=settings.templates, score_order=settings.score_order, classes=classes)
    )
