"""The runtime context, and the small protocols that say what the nodes need of it.

Heavy, shared objects (a segmenter, an LMM backend, the artifact store, the
reasoning cache) reach the nodes through LangGraph's runtime context, never through
state or globals. Nodes depend on the protocols below, not on concrete classes:
:class:`~openseg_r.segmenters.dense_clip.CLIPSegmenter`, the backends in :mod:`openseg_r.lmm` and
the caches in :mod:`openseg_r._support.cache` are implementations, and anything with the same
methods plugs in without subclassing (docs/design.md §3.4). The ``Segmenter``
protocol (:mod:`openseg_r.segmenters.base`) is the door for other segmenters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from openseg_r._support.cache import MemoryReasoningCache
from openseg_r._support.flights import SingleFlight
from openseg_r._support.store import ArtifactStore
from openseg_r.config.options import DEFAULT_LMM_CONCURRENCY
from openseg_r.lmm.base import LMMReply, LMMRequest, NoLMM
from openseg_r.lmm.health import RunBreaker
from openseg_r.nodes.matching import NameEmbedder
from openseg_r.segmenters.base import EmbedsNames, Segmenter


@runtime_checkable
class LMMBackend(Protocol):
    """Answers a structured question about text and images.

    ``ask`` returns the validated object (or None), the raw text, usage and a trace
    record of every attempt; ``max_attempts`` lowers the backend's own bound on
    re-asks for one request. ``cache_identity`` names the model and the generation
    parameters that change answers (cache keys use it). Subclassing
    :class:`openseg_r.lmm.base.BaseLMMBackend` gives all of this for one ``complete``
    method."""

    name: str
    model_id: str
    max_attempts: int

    @property
    def cache_identity(self) -> str: ...

    def ask(self, request: LMMRequest, max_attempts: int | None = None) -> LMMReply: ...


@runtime_checkable
class ReasoningCache(Protocol):
    """Generic and image reasoning keyed by what the answer depends on (a dict).

    ``get`` returns None on a miss; ``hits``, ``misses`` and ``events`` (notes such as
    a locked or rebuilt database) are reported with each result; ``path`` is the file,
    or None in memory."""

    path: Any
    hits: int
    misses: int
    events: list[str]

    def get(self, kind: str, key: dict) -> dict | None: ...

    def put(self, kind: str, key: dict, value: dict) -> None: ...


@dataclass
class OpenSegContext:
    """Passed as ``context=`` to ``graph.invoke``; nodes read it from ``runtime.context``."""

    segmenter: Segmenter | None = None  # only the segmentation node needs it (and the aligner's default)
    lmm: LMMBackend = field(default_factory=NoLMM)
    store: ArtifactStore = field(default_factory=ArtifactStore)
    reasoning_cache: ReasoningCache = field(default_factory=MemoryReasoningCache)
    # Embeds names for the class aligner: (names) -> (N, D) normalised. None: the segmenter's.
    aligner: NameEmbedder | None = None
    max_concurrent_lmm_calls: int = DEFAULT_LMM_CONCURRENCY
    # Bounds the LMM calls in flight at once: every node asks inside it. A model shares one
    # between all its runs, so concurrent images together stay within the limit.
    lmm_slots: threading.BoundedSemaphore | None = field(default=None, repr=False)
    # Concurrent runs asking for the same generic reasoning share one LMM call.
    flights: SingleFlight = field(default_factory=SingleFlight, repr=False)
    # This run's circuit breaker: once the backend is found unavailable, the run asks nothing more.
    # It is per run: give each graph run its own context (OpenSegR.context() builds one).
    lmm_breaker: RunBreaker = field(default_factory=RunBreaker, repr=False)

    def __post_init__(self) -> None:
        if self.lmm_slots is None:
            self.lmm_slots = threading.BoundedSemaphore(max(1, self.max_concurrent_lmm_calls))

    def name_embedder(self) -> NameEmbedder | None:
        """The aligner's embeddings: the context's aligner, else the segmenter's text side;
        None when there is neither (names then match only exactly or normalised)."""
        if self.aligner is not None:
            return self.aligner
        if isinstance(self.segmenter, EmbedsNames):
            return self.segmenter.embed_names
        return None
