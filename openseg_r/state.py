"""Typed models for everything the graph passes around and records.

The graph state holds only what a checkpoint or a trace should show: reasoning,
prompts, references to images and arrays, decisions and timings. Pixels and
tensors live in the artifact store (see :mod:`openseg_r.store`) and are referred
to by content key.
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ATTRIBUTES = 10
MAX_CANDIDATES = 200
MAX_TEXT = 300


def _clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """Untrusted LMM text: coerce to a single trimmed line of bounded length."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return text[:limit]


# --------------------------------------------------------------------------- reasoning


class ClassReasoning(BaseModel):
    """Coarse-to-fine reasoning about one class (DESIGN §2.1).

    Fields are cleaned on the way in because they come from an LMM: whitespace is
    collapsed, lengths are bounded, empty attributes are dropped.
    """

    model_config = ConfigDict(extra="ignore")

    name: str
    general_category: str = ""
    sub_category: str = ""
    attributes: list[str] = Field(default_factory=list)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> str:
        text = _clean_text(value, 120)
        if not text:
            raise ValueError("name must not be empty")
        return text

    @field_validator("general_category", "sub_category", mode="before")
    @classmethod
    def _category(cls, value: object) -> str:
        return _clean_text(value, 120)

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes(cls, value: object) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part for part in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ValueError("attributes must be a list of strings")
        cleaned: list[str] = []
        for item in value:
            text = _clean_text(item, 120)
            if text and text not in cleaned:
                cleaned.append(text)
        return cleaned[:MAX_ATTRIBUTES]


class ImageReasoning(BaseModel):
    """Image-specific reasoning (DESIGN §2.2): a description and the classes seen."""

    model_config = ConfigDict(extra="ignore")

    description: str = ""
    candidates: list[ClassReasoning] = Field(default_factory=list)

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, value: object) -> str:
        return _clean_text(value, 2000)

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidates(cls, value: object) -> object:
        if value is None:
            return []
        return value[:MAX_CANDIDATES] if isinstance(value, list) else value


class ImageDescription(BaseModel):
    """Chain step 1."""

    model_config = ConfigDict(extra="ignore")

    description: str

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, value: object) -> str:
        return _clean_text(value, 2000)


class CandidateSearch(BaseModel):
    """Chain step 2: names of the classes present."""

    model_config = ConfigDict(extra="ignore")

    present: list[str]

    @field_validator("present", mode="before")
    @classmethod
    def _present(cls, value: object) -> list[str]:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ValueError("present must be a list of class names")
        return [text for text in (_clean_text(v, 120) for v in value) if text][:MAX_CANDIDATES]


class CandidateReasons(BaseModel):
    """Chain step 3."""

    model_config = ConfigDict(extra="ignore")

    candidates: list[ClassReasoning]


# --------------------------------------------------------------------------- inputs


class VocabularyClass(BaseModel):
    """One class: a display name and the text queries that stand for it."""

    name: str
    queries: list[str]
    is_background: bool = False


class Vocabulary(BaseModel):
    name: str | None = None
    classes: list[VocabularyClass]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def background_index(self) -> int | None:
        for index, cls in enumerate(self.classes):
            if cls.is_background:
                return index
        return None


class ImageRef(BaseModel):
    """A decoded RGB image held in the artifact store."""

    key: str
    width: int
    height: int
    source: str | None = None


ATTENTION_VARIANTS = ("naclip", "sclip", "clearclip", "maskclip", "vanilla")
ScoreOrder = Literal["max_then_softmax", "softmax_then_max"]
ClassFilter = Literal["hard", "soft", "none"]


class Settings(BaseModel):
    """Per-run settings that change the result (recorded in the trace)."""

    reasoning: bool = True
    n_attributes: int = Field(3, ge=1, le=MAX_ATTRIBUTES)
    include_bare_slot: bool = False
    templates: Literal["vild", "imagenet"] = "vild"
    score_order: ScoreOrder = "max_then_softmax"
    logit_scale: float = Field(40.0, gt=0)
    class_filter: ClassFilter = "hard"
    soft_filter_weight: float = Field(0.3, gt=0, le=1)
    background_threshold: float = Field(0.1, ge=0, le=1)
    image_reasoning_mode: Literal["single", "chain"] = "single"
    align_threshold: float = Field(0.85, ge=-1, le=2)  # cosine; above 1 turns embedding matching off


# --------------------------------------------------------------------------- steps


class NameAlignment(BaseModel):
    """How one name returned by the LMM was mapped onto the vocabulary."""

    raw: str
    matched: str | None
    method: Literal["exact", "normalised", "embedding", "dropped"]
    score: float | None = None


class ClassAlignment(BaseModel):
    """Image candidates mapped onto vocabulary classes.

    ``present`` is None when no class filtering must happen (reasoning off, or the
    image reasoning fell back).
    """

    present: list[str] | None = None
    image_attributes: dict[str, list[str]] = Field(default_factory=dict)
    decisions: list[NameAlignment] = Field(default_factory=list)


class ClassPrompts(BaseModel):
    """The composed prompts of one class: synonyms x attribute slots."""

    name: str
    queries: list[str]
    slots: list[str | None]
    source: Literal["image", "generic", "bare"]

    def phrases(self) -> list[list[str]]:
        """phrases[s][j]: synonym s filled with slot j (``None`` slot = bare name)."""
        return [[compose_phrase(q, a) for a in self.slots] for q in self.queries]


def compose_phrase(query: str, attribute: str | None) -> str:
    """DESIGN §2.4: ``f"{s} that has {a}"``; the bare slot is the synonym alone."""
    return query if attribute is None else f"{query} that has {attribute}"


class PromptSet(BaseModel):
    templates: str
    score_order: ScoreOrder
    classes: list[ClassPrompts]

    @property
    def num_slots(self) -> int:
        return len(self.classes[0].slots) if self.classes else 0


class ClassSummary(BaseModel):
    index: int
    name: str
    pixels: int
    area_fraction: float
    mean_confidence: float | None


class SegmentationOutput(BaseModel):
    """References to the segmenter's arrays, plus what it did to classes."""

    labels_key: str
    confidence_key: str
    runner_up_key: str
    margin_key: str
    height: int
    width: int
    suppressed_classes: list[str] = Field(default_factory=list)
    background_pixels: int = 0


class SegmentationReport(BaseModel):
    """What finalize makes of the run: the readable summary of the result."""

    classes: list[ClassSummary]
    present_classes: list[str]


# --------------------------------------------------------------------------- trace


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LMMCall(BaseModel):
    """One question to the LMM, as the trace shows it."""

    step: str
    subject: str | None = None
    backend: str
    prompt_version: str
    attempt: int = 1
    ok: bool
    error: str | None = None
    raw_text: str
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0


class Fallback(BaseModel):
    """A stated fallback: what went wrong and what was used instead."""

    step: str
    subject: str | None = None
    reason: str
    used: str


class NodeTiming(BaseModel):
    node: str
    seconds: float


class OpenSegState(BaseModel):
    """The graph state. Lists with ``operator.add`` accumulate across nodes."""

    image: ImageRef
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    generic_reasoning: dict[str, ClassReasoning] | None = None
    image_reasoning: ImageReasoning | None = None
    alignment: ClassAlignment | None = None
    prompts: PromptSet | None = None
    segmentation: SegmentationOutput | None = None
    report: SegmentationReport | None = None
    lmm_calls: Annotated[list[LMMCall], operator.add] = Field(default_factory=list)
    fallbacks: Annotated[list[Fallback], operator.add] = Field(default_factory=list)
    timings: Annotated[list[NodeTiming], operator.add] = Field(default_factory=list)
