"""``OpenSegR``: the common case in two lines.

>>> seg = OpenSegR(lmm="scripted:answers.json")
>>> result = seg.segment("photo.jpg", "cat, sofa, lamp")
>>> result.save("out/")

Models load once in the constructor; ``segment`` can be called for many images,
and text embeddings and generic reasoning are reused between calls.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from pydantic import ValidationError

from openseg_r.cache import MemoryReasoningCache, open_cache
from openseg_r.errors import ConfigError, describe_validation_error
from openseg_r.graph import OpenSegContext, build_graph
from openseg_r.images import DEFAULT_MAX_PIXELS, load_image
from openseg_r.lmm.base import LMMBackend, NoLMM
from openseg_r.lmm.spec import backend_from_spec, configured_spec
from openseg_r.nodes.class_alignment import sentence_embedder
from openseg_r.result import SegmentationResult
from openseg_r.segment.segmenter import CLIPSegmenter, SegmenterConfig
from openseg_r.state import ImageRef, OpenSegState, Settings, Vocabulary
from openseg_r.store import ArtifactStore
from openseg_r.vocab import resolve_vocabulary

ImageInput = str | Path | bytes | np.ndarray | Image.Image


class OpenSegR:
    def __init__(
        self,
        clip_model: str = "ViT-B-16",
        clip_pretrained: str | None = "openai",
        *,
        lmm: str | LMMBackend | None = None,
        lmm_record: str | Path | None = None,
        reasoning_cache: str | Path | MemoryReasoningCache | None = None,
        aligner: str | Callable | None = None,
        settings: Settings | None = None,
        segmenter: CLIPSegmenter | None = None,
        device: str | None = None,
        precision: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        **segmenter_config,
    ) -> None:
        """``lmm`` is a backend or a spec string (see :mod:`openseg_r.lmm.spec`); None takes
        ``OPENSEG_R_LMM`` or the config file. Reasoning is on by default when there is an
        LMM and off otherwise; ``settings`` overrides that. ``lmm_record`` appends every
        LMM call to a JSONL file (replay it with ``replay:FILE``). ``reasoning_cache`` is
        an SQLite path (or a cache object); None keeps reasoning in memory. ``aligner``
        is ``clip`` (default), ``minilm``, a sentence-transformers model, or a callable."""
        self.segmenter = segmenter or CLIPSegmenter.from_pretrained(
            clip_model, clip_pretrained, device=device, precision=precision, **segmenter_config
        )
        self.lmm = backend_from_spec(lmm if isinstance(lmm, LMMBackend) else configured_spec(lmm), record=lmm_record)
        self.reasoning_cache = (
            reasoning_cache if isinstance(reasoning_cache, MemoryReasoningCache) else open_cache(reasoning_cache)
        )
        self.aligner = _aligner(aligner)
        self.settings = settings or Settings(reasoning=not isinstance(self.lmm, NoLMM))
        self.max_pixels = max_pixels
        self.graph = build_graph()

    def context(self, store: ArtifactStore | None = None) -> OpenSegContext:
        return OpenSegContext(
            segmenter=self.segmenter,
            lmm=self.lmm,
            store=store or ArtifactStore(),
            reasoning_cache=self.reasoning_cache,
            aligner=self.aligner,
        )

    def segment(
        self, image: ImageInput, vocabulary: str | list[str] | Vocabulary, **settings_overrides
    ) -> SegmentationResult:
        """Segment one image. Keyword arguments override fields of :class:`Settings`,
        e.g. ``reasoning=False`` for the bare-name baseline."""
        try:
            settings = Settings.model_validate(self.settings.model_dump() | settings_overrides)
        except ValidationError as exc:
            raise ConfigError(f"invalid setting: {describe_validation_error(exc)}") from None
        vocab = resolve_vocabulary(vocabulary)
        rgb = load_image(image, max_pixels=self.max_pixels)
        store = ArtifactStore()
        source = str(image) if isinstance(image, (str, Path)) else None
        ref = ImageRef(key=store.put(rgb), width=rgb.shape[1], height=rgb.shape[0], source=source)
        state = OpenSegState(image=ref, vocabulary=vocab, settings=settings)
        hits, misses = self.reasoning_cache.hits, self.reasoning_cache.misses
        final = OpenSegState.model_validate(self.graph.invoke(state, context=self.context(store)))
        cache = {
            "path": str(self.reasoning_cache.path) if self.reasoning_cache.path else None,
            "hits": self.reasoning_cache.hits - hits,
            "misses": self.reasoning_cache.misses - misses,
            "events": list(self.reasoning_cache.events),
        }
        return SegmentationResult(
            labels=store.get(final.segmentation.labels_key),
            confidence=store.get(final.segmentation.confidence_key),
            image=rgb,
            state=final,
            segmenter=self.describe_segmenter(),
            reasoning_cache=cache,
        )

    def describe_segmenter(self) -> dict:
        clip = self.segmenter.clip
        return {
            "clip_model": clip.model_name,
            "clip_pretrained": clip.pretrained,
            "device": str(clip.device),
            "dtype": str(clip.dtype).replace("torch.", ""),
            **asdict(self.segmenter.config),
        }


def _aligner(choice: str | Callable | None) -> Callable | None:
    if choice is None or choice == "clip":
        return None
    if callable(choice):
        return choice
    return sentence_embedder(choice)


__all__ = ["OpenSegR", "SegmenterConfig"]
