"""Noun phrases for SAM 3, from the composed prompts (no torch).

SAM 3 takes short noun phrases ("striped cat", "red double-decker bus"), not CLIP's
sentences. Each class gives, in this order, until ``phrases_per_class`` are taken:

1. its name and its synonyms (the vocabulary's ``sofa|couch`` gives both);
2. with reasoning, one phrase per attribute of its slots, the attribute before the name
   (``striped`` + ``cat`` -> ``striped cat``), for attributes of at most
   :data:`MAX_ATTRIBUTE_WORDS` words (longer ones are descriptions, not noun phrases).

Phrases are deduplicated ignoring case. Every phrase belongs to exactly one class: its
instances become that class's pixels (the rule is in :mod:`openseg_r.segmenters.sam3.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass

from openseg_r.errors import ConfigError
from openseg_r.schemas import PromptSet

MAX_ATTRIBUTE_WORDS = 3


@dataclass(frozen=True)
class PhraseSet:
    """The phrases of one vocabulary: ``phrases[i]`` belongs to class ``classes[i]``."""

    phrases: tuple[str, ...]
    classes: tuple[int, ...]
    num_classes: int

    def of_classes(self, kept: set[int] | None) -> list[int]:
        """Indices of the phrases of the ``kept`` classes (all when None)."""
        return [i for i, c in enumerate(self.classes) if kept is None or c in kept]


def class_phrases(queries: list[str], slots: list[str | None], limit: int) -> list[str]:
    """One class's phrases: names and synonyms first, then short attribute phrases."""
    found: list[str] = []
    seen: set[str] = set()

    def take(phrase: str) -> None:
        phrase = " ".join(phrase.split())
        if phrase and phrase.casefold() not in seen and len(found) < limit:
            seen.add(phrase.casefold())
            found.append(phrase)

    for query in queries:
        take(query)
    name = queries[0] if queries else ""
    for attribute in slots:
        if attribute and len(attribute.split()) <= MAX_ATTRIBUTE_WORDS:
            take(f"{attribute} {name}")
    return found


def phrases_for(prompts: PromptSet, per_class: int, budget: int) -> PhraseSet:
    """Every class's phrases; more than ``budget`` in all is a one-line ConfigError."""
    phrases: list[str] = []
    classes: list[int] = []
    for index, prompt in enumerate(prompts.classes):
        for phrase in class_phrases(prompt.queries, prompt.slots, per_class):
            phrases.append(phrase)
            classes.append(index)
    if len(phrases) > budget:
        raise ConfigError(
            f"this vocabulary needs {len(phrases)} SAM 3 phrases, over the text budget of {budget} "
            "(sam3 option max_phrases; fewer classes or phrases_per_class lower it)"
        )
    return PhraseSet(tuple(phrases), tuple(classes), len(prompts.classes))
