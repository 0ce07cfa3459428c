"""CLIP text embeddings of class phrases, averaged over templates and cached.

A phrase's embedding is ``normalise(mean_t normalise(encode(t.format(phrase))))``
(docs/design.md §1.4). The cache is keyed by (template set, phrase) for one model, so a
vocabulary's embeddings are computed once and reused for every image.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock

import torch
import torch.nn.functional as F

from openseg_r.prompts.templates import templates_for
from openseg_r.segment.loading import LoadedCLIP

TEXT_BATCH = 256


class TextEmbedder:
    def __init__(self, clip: LoadedCLIP, max_cached: int = 200_000, *, store=None) -> None:
        self.clip = clip
        self.store = store
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = Lock()
        self.encoded_sentences = 0  # how many sentences went through the text tower

    def embed(self, phrases: list[str], template_set: str) -> torch.Tensor:
        """Return (len(phrases), D) float32 embeddings on the model's device."""
        templates = templates_for(template_set)
        with self._lock:
            missing = list(dict.fromkeys(p for p in phrases if (template_set, p) not in self._cache))
            if missing:
                for phrase, vector in zip(missing, self._encode(missing, templates)):
                    self._cache[(template_set, phrase)] = vector
                while len(self._cache) > self.max_cached:
                    self._cache.popitem(last=False)
            vectors = [self._cache[(template_set, p)] for p in phrases]
        if not vectors:
            raise ValueError("no phrases to embed")
        return torch.stack(vectors).to(self.clip.device)

    @torch.inference_mode()
    def _encode(self, phrases: list[str], templates: tuple[str, ...]) -> list[torch.Tensor]:
        sentences = [template.format(phrase) for phrase in phrases for template in templates]
        chunks = []
        for start in range(0, len(sentences), TEXT_BATCH):
            tokens = self.clip.tokenizer(sentences[start : start + TEXT_BATCH]).to(self.clip.device)
            chunks.append(F.normalize(encode_text(self.clip.model, tokens).float(), dim=-1))
        self.encoded_sentences += len(sentences)
        per_sentence = torch.cat(chunks).reshape(len(phrases), len(templates), -1)
        averaged = F.normalize(per_sentence.mean(dim=1), dim=-1)
        return [row.cpu() for row in averaged]


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text``, but on tokens cut after the last end-of-text token.

    For CLIP's causal text tower pooled at the end-of-text token (the argmax), the
    positions after it cannot influence the result, so cutting them gives the same
    embedding several times faster (prompts are ~15 tokens of the 77). Other text
    towers take the plain path.
    """
    causal_argmax = (
        getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
        and hasattr(model, "token_embedding")
        and getattr(model, "text_projection", None) is not None
    )
    if not causal_argmax:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    cut = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(cut).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), cut.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
