"""The runtime context: heavy, shared objects that nodes use but state never holds."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from openseg_r.cache import MemoryReasoningCache
from openseg_r.lmm.base import LMMBackend, NoLMM
from openseg_r.segment.segmenter import CLIPSegmenter
from openseg_r.store import ArtifactStore


@dataclass
class OpenSegContext:
    """Passed as ``context=`` to ``graph.invoke``; nodes read it from ``runtime.context``.

    ``reasoning_cache`` holds generic and image reasoning keyed by model, prompt
    version and class or image (in memory, or SQLite via :func:`openseg_r.cache.open_cache`).
    """

    segmenter: CLIPSegmenter | None = None  # only the segmentation and alignment nodes need it
    lmm: LMMBackend = field(default_factory=NoLMM)
    store: ArtifactStore = field(default_factory=ArtifactStore)
    reasoning_cache: MemoryReasoningCache = field(default_factory=MemoryReasoningCache)
    # Embeds names for the class aligner: (names) -> (N, D) normalised. None: the CLIP text tower.
    aligner: Callable[[list[str]], torch.Tensor] | None = None
    max_concurrent_lmm_calls: int = 4
    lmm_slots: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Bounds the LMM calls that parallel branches (the self-check's Send fan-out) make at once.
        self.lmm_slots = threading.BoundedSemaphore(max(1, self.max_concurrent_lmm_calls))
