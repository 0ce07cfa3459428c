"""Matching free-text names onto vocabulary classes, in one place.

An LMM says "couch" where the vocabulary has "sofa|couch", "Dining-Tables" where it
has "diningtable", or a name that is not there at all. Three nodes map such names:
class alignment (the image's candidates), image reasoning's chain (which candidates
to ask about), and the self-check (a region's answer). All use :class:`NameMatcher`:

1. an exact match against any synonym;
2. a match after normalisation (case, punctuation, whitespace, simple plurals);
3. optionally, the nearest text embedding at or above a threshold;
4. otherwise the name is dropped. Every decision is a :class:`NameAlignment`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable

from openseg_r.schemas import NameAlignment, VocabularyClass

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)

NameEmbedder = Callable[[list[str]], "object"]  # names -> (N, D) L2-normalised torch tensor


def normalise_name(name: str) -> str:
    """Case-, space-, punctuation- and plural-insensitive form: 'Dining-Tables' -> 'diningtable'."""
    text = unicodedata.normalize("NFKC", name).casefold()
    words = _NON_WORD.sub(" ", text).split()
    return "".join(_singular(word) for word in words)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class NameMatcher:
    """Maps names onto a set of classes; each class answers to its name and synonyms.
    Where two classes share a synonym, the first class listed wins."""

    def __init__(self, classes: Iterable[VocabularyClass]) -> None:
        self.queries: list[tuple[str, str]] = []  # (class name, synonym)
        self._exact: dict[str, str] = {}
        self._normalised: dict[str, str] = {}
        for cls in classes:
            for query in dict.fromkeys([cls.name, *cls.queries]):
                self.queries.append((cls.name, query))
                self._exact.setdefault(query, cls.name)
                self._normalised.setdefault(normalise_name(query), cls.name)

    @property
    def class_names(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.queries))

    def match_text(self, raw: str) -> NameAlignment:
        """Exact, else normalised; ``dropped`` when neither matches."""
        if raw in self._exact:
            return NameAlignment(raw=raw, matched=self._exact[raw], method="exact")
        normalised = self._normalised.get(normalise_name(raw))
        if normalised is not None:
            return NameAlignment(raw=raw, matched=normalised, method="normalised")
        return NameAlignment(raw=raw, matched=None, method="dropped")

    def match_embeddings(self, raws: list[str], embed: NameEmbedder, threshold: float) -> list[NameAlignment]:
        """The nearest synonym by cosine similarity of ``embed``'s vectors; at or above
        ``threshold`` it matches, below it the name is dropped (the score is kept)."""
        if not raws or not self.queries:
            return [NameAlignment(raw=raw, matched=None, method="dropped") for raw in raws]
        import torch

        vocab_vectors = torch.as_tensor(embed([q for _, q in self.queries]))
        raw_vectors = torch.as_tensor(embed(list(raws))).to(vocab_vectors.device, vocab_vectors.dtype)
        best_score, best_index = (raw_vectors @ vocab_vectors.T).max(dim=1)
        decisions = []
        for raw, score, index in zip(raws, best_score.tolist(), best_index.tolist()):
            score = round(float(score), 4)
            if score >= threshold:
                decisions.append(
                    NameAlignment(raw=raw, matched=self.queries[index][0], method="embedding", score=score)
                )
            else:
                decisions.append(NameAlignment(raw=raw, matched=None, method="dropped", score=score))
        return decisions

    def match(self, raws: list[str], embed: NameEmbedder | None = None, threshold: float = 1.0) -> list[NameAlignment]:
        """Every step in order: exact, normalised, then (with ``embed``) embeddings for the rest."""
        decisions = [self.match_text(raw) for raw in raws]
        unmatched = [i for i, d in enumerate(decisions) if d.matched is None]
        if unmatched and embed is not None:
            for i, decision in zip(unmatched, self.match_embeddings([raws[i] for i in unmatched], embed, threshold)):
                decisions[i] = decision
        return decisions

    def known_names(self, raws: Iterable[str]) -> list[str]:
        """The classes that ``raws`` name exactly or after normalisation, once each, in order."""
        found = (self.match_text(raw).matched for raw in raws)
        return list(dict.fromkeys(name for name in found if name is not None))
