"""What a segmenter is asked and what it answers, as plain data (numpy, no torch).

The segmentation node hands a segmenter a :class:`ClassFilter` and gets back
:class:`SegmentationArrays`. Both live here, below the segmenters and the nodes, so
that any segmenter (the dense-CLIP one, or a trained one later) and the self-check's
array code share them without importing each other (docs/design.md §3.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from openseg_r.schemas import PromptSet

FilterMode = Literal["hard", "zero", "soft", "none"]


@dataclass
class ClassFilter:
    """Which classes image reasoning found, and how to treat the others.

    ``hard`` (OpenSeg-R's rule): the softmax runs over the present classes (and ``keep``)
    only; the others get 0. ``zero``: the softmax runs over every class, then the absent
    ones are set to 0 without renormalising. ``soft``: absent classes' probabilities are
    multiplied by ``soft_weight``. ``none``: no filtering."""

    present: list[int] | None = None  # None: no filtering
    mode: FilterMode = "hard"
    soft_weight: float = 0.3  # soft: absent classes' probabilities are multiplied by this
    keep: tuple[int, ...] = ()  # never filtered (the background class)

    def suppressed(self, num_classes: int) -> list[int]:
        """Indices of the classes this filter removes or down-weights."""
        if self.present is None or self.mode == "none":
            return []
        kept = set(self.present) | set(self.keep)
        return [c for c in range(num_classes) if c not in kept]


@dataclass(frozen=True)
class Instance:
    """One object a segmenter found (segmenters that find instances, such as SAM 3): its
    class (an index into the vocabulary), the phrase that found it, its score, its box in
    pixels (x0, y0, x1, y1) and its mask as COCO RLE (``{"size": [h, w], "counts": ...}``)."""

    class_index: int
    phrase: str
    score: float
    box: tuple[float, float, float, float]
    mask: dict


@dataclass
class SegmentationArrays:
    """Per-pixel outputs at the input image's size."""

    labels: np.ndarray  # (H, W) int32 index into the vocabulary; UNKNOWN_LABEL for "none of these"
    confidence: np.ndarray  # (H, W) float32 probability of the chosen class
    runner_up: np.ndarray  # (H, W) int32 second-best class, -1 when there is none
    margin: np.ndarray  # (H, W) float32 top-1 minus top-2 probability (before the background threshold)
    runner_up_confidence: np.ndarray | None = None  # (H, W) float32 probability of ``runner_up``
    suppressed: list[int] = field(default_factory=list)
    background_pixels: int = 0
    instances: list[Instance] | None = None  # best first; None: this segmenter finds no instances
    phrases: list[tuple[int, str]] | None = None  # (class, phrase) sent to a phrase-driven segmenter (SAM 3)


@dataclass
class SegmentJob:
    """One image to segment, with everything :meth:`Segmenter.segment` takes: the unit of
    ``segment_batch`` and of the micro-batcher's queue."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    bank: Any  # the segmenter's query bank for this image's prompts
    class_filter: ClassFilter | None = None
    logit_scale: float = 40.0
    background_index: int | None = None
    background_threshold: float = 0.0
    image_key: str | None = None  # content hash: the same image scored again may reuse work
    cancel: Any = None  # the caller's CancelToken (openseg_r._support.cancel): once set, the image is dropped


@runtime_checkable
class Segmenter(Protocol):
    """Scores every pixel of an image against composed prompts.

    ``query_bank`` is the text side: it turns the prompts into whatever the image side
    needs (embeddings, a classifier) and may cache by phrase. ``segment`` is the image
    side: uint8 RGB (H, W, 3) in, :class:`SegmentationArrays` at the image's size out,
    with ``class_filter`` applied (see :class:`ClassFilter`) and, when
    ``background_index`` is set, pixels under ``background_threshold`` set to it.
    ``image_key`` is the image's content hash: a segmenter may reuse work for the same
    image scored again. ``describe`` says what the segmenter is (recorded with results).

    A segmenter that also has ``embed_names(names) -> (N, D)`` normalised vectors gives
    the class aligner its default embeddings (:class:`EmbedsNames`)."""

    def query_bank(self, prompts: PromptSet) -> Any: ...

    def segment(
        self,
        rgb: np.ndarray,
        bank: Any,
        *,
        class_filter: ClassFilter | None = None,
        logit_scale: float = 40.0,
        background_index: int | None = None,
        background_threshold: float = 0.0,
        image_key: str | None = None,
    ) -> SegmentationArrays: ...

    def describe(self) -> dict: ...


@runtime_checkable
class EmbedsNames(Protocol):
    """Optional: a segmenter whose text side can embed bare names for the class aligner."""

    def embed_names(self, names: list[str]) -> Any: ...


@dataclass(frozen=True)
class BuildRequest:
    """What every segmenter is built with besides its own options (from ``ModelOptions``)."""

    device: str | None = None  # cpu, cuda, cuda:1; None: the GPU if there is one
    precision: str = "auto"
    text_cache: str | None = None  # an SQLite file for text embeddings, "user", or None (memory)


@dataclass(frozen=True)
class SegmenterKind:
    """One registry entry: a name, the pydantic model of its options (defaults and help
    texts), and the factory that turns validated options into a :class:`Segmenter`.

    ``build`` is ``"module:function"`` (imported only when a model is built, so listing
    kinds never loads torch) or the function itself: ``build(options, request) -> Segmenter``.
    ``speed_only`` names options that change how fast results come, never the results
    (a resumed run may change them); ``variants`` lists an option's values for
    ``openseg-r segmenters``. Third-party kinds are objects of this class named by an
    entry point in the ``openseg_r.segmenters`` group."""

    name: str
    summary: str
    options: type
    build: Any
    speed_only: tuple[str, ...] = ()
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    instances: bool = False  # it finds objects too (SegmentationArrays.instances), not only a label map
    origin: str = "built in"
