"""The runtime context: heavy, shared objects that nodes use but state never holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from openseg_r.lmm.base import LMMBackend, NoLMM
from openseg_r.segment.segmenter import CLIPSegmenter
from openseg_r.state import ClassReasoning
from openseg_r.store import ArtifactStore


@dataclass
class OpenSegContext:
    """Passed as ``context=`` to ``graph.invoke``; nodes read it from ``runtime.context``.

    ``reasoning_cache`` maps (backend name, prompt version, class name) to generic
    reasoning, so each class is reasoned about once per backend and prompt.
    """

    segmenter: CLIPSegmenter
    lmm: LMMBackend = field(default_factory=NoLMM)
    store: ArtifactStore = field(default_factory=ArtifactStore)
    reasoning_cache: dict[tuple[str, str, str], ClassReasoning] = field(default_factory=dict)
    max_concurrent_lmm_calls: int = 4
