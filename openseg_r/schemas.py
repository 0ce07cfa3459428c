"""Typed records of everything the graph passes around and records: the LMM's answers
(class and image reasoning), the composed prompts, the segmentation's outputs, the
self-check's regions and verdicts, and the trace (LMM calls, fallbacks, timings).

Pixels and tensors live in the artifact store (:mod:`openseg_r._support.store`) and are
referred to by content key; the graph state that holds these records is
:class:`openseg_r.graph.state.OpenSegState`.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

MAX_ATTRIBUTES = 10


MAX_CANDIDATES = 200


MAX_TEXT = 300


# Control characters, format characters (bidi overrides and isolates, zero-width ones) and
# lone surrogates: never wanted in a prompt, a trace or a terminal.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def _clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """Untrusted LMM text: one trimmed line of bounded length, with control, bidi and
    zero-width characters and lone surrogates removed."""
    if value is None:
        return ""
    text = "".join(
        " " if ch.isspace() else ch
        for ch in str(value)
        if ch.isspace() or unicodedata.category(ch) not in _UNSAFE_CATEGORIES
    )
    return " ".join(text.split())[:limit]


def _describe_dropped(position: int, item: object) -> str:
    kind = {dict: "an object", list: "a list", tuple: "a list", bool: "a true/false value"}.get(
        type(item), "a number" if isinstance(item, (int, float)) else type(item).__name__
    )
    try:
        shown = json.dumps(item, ensure_ascii=True, default=str)
    except (TypeError, ValueError):
        shown = "?"
    return f"item {position} is {kind}, not text: {_clean_text(shown, 60)}"


ClassKind = Literal["thing", "stuff"]


class ClassReasoning(BaseModel):
    """Coarse-to-fine reasoning about one class (docs/design.md §1.1).

    Fields are cleaned on the way in because they come from an LMM: whitespace is
    collapsed, control and bidi characters are removed, lengths are bounded, empty
    attributes are dropped, and attributes that are not text (objects, lists, numbers)
    are dropped rather than turned into prompt text. ``dropped`` says what was dropped
    (the nodes record it as a fallback); it is never part of the schema an LMM sees, nor
    of what is stored.
    """

    model_config = ConfigDict(extra="ignore")

    name: str
    general_category: str = ""
    sub_category: str = ""
    attributes: list[str] = Field(default_factory=list)
    kind: ClassKind | None = Field(
        None, description="thing: countable objects; stuff: an amorphous region (for panoptic output)"
    )
    dropped: SkipJsonSchema[list[str]] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _only_text_attributes(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        data["dropped"] = []  # never taken from the answer itself
        items = data.get("attributes")
        if isinstance(items, (list, tuple)):
            data["attributes"] = [item for item in items if isinstance(item, str)]
            data["dropped"] = [
                _describe_dropped(i, item) for i, item in enumerate(items, start=1) if not isinstance(item, str)
            ][:MAX_ATTRIBUTES]
        return data

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError("name must be text")
        text = _clean_text(value, 120)
        if not text:
            raise ValueError("name must not be empty")
        return text

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: object) -> str | None:
        """An answer other than thing or stuff says nothing (the class stays unmarked)."""
        text = value.strip().lower() if isinstance(value, str) else None
        return text if text in ("thing", "stuff") else None

    @field_validator("general_category", "sub_category", mode="before")
    @classmethod
    def _category(cls, value: object) -> str:
        return _clean_text(value, 120) if isinstance(value, str) else ""

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
    """Image-specific reasoning (docs/design.md §1.2): a description and the classes seen."""

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
        names = (_clean_text(v, 120) for v in value if isinstance(v, str))
        return [text for text in names if text][:MAX_CANDIDATES]


class CandidateReasons(BaseModel):
    """Chain step 3."""

    model_config = ConfigDict(extra="ignore")

    candidates: list[ClassReasoning]


class VocabularyClass(BaseModel):
    """One class: a display name and the text queries that stand for it, and, for panoptic
    output, whether it is a countable thing or amorphous stuff (None: not said)."""

    name: str
    queries: list[str]
    is_background: bool = False
    kind: ClassKind | None = None


class Vocabulary(BaseModel):
    name: str | None = None
    classes: list[VocabularyClass]
    kinds_source: str | None = None  # where a built-in vocabulary's things and stuff come from

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


ScoreOrder = Literal["max_then_softmax", "softmax_then_max"]
UNKNOWN_LABEL = -1  # label-map value of pixels the self-check marked "none of these"


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
    """docs/design.md §1.4: ``f"{s} that has {a}"``; the bare slot is the synonym alone."""
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


class InstanceRecord(BaseModel):
    """One object found by a segmenter that finds instances (SAM 3): its class, the phrase
    that found it, its score, its box in pixels (x0, y0, x1, y1) and its mask as COCO RLE."""

    class_name: str
    phrase: str
    score: float
    box: tuple[float, float, float, float]
    mask: dict


class SegmentationOutput(BaseModel):
    """References to the segmenter's arrays, plus what it did to classes."""

    labels_key: str
    confidence_key: str
    runner_up_key: str
    margin_key: str
    runner_up_confidence_key: str | None = None
    height: int
    width: int
    suppressed_classes: list[str] = Field(default_factory=list)
    background_pixels: int = 0
    instances: list[InstanceRecord] | None = None  # best first; None: the segmenter finds no instances
    phrases: dict[str, list[str]] | None = None  # class -> the phrases sent to a phrase-driven segmenter (SAM 3)


class SegmentationReport(BaseModel):
    """What finalize makes of the run: the readable summary of the result."""

    classes: list[ClassSummary]
    present_classes: list[str]
    unknown_pixels: int = 0  # marked "none of these" by the self-check


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, end-exclusive


class RegionEvidence(BaseModel):
    """One competing class in a region: what the segmenter and the reasoning say."""

    name: str
    mean_probability: float  # over the region; 0 where the class is not in a pixel's top two
    top1_share: float  # share of the region's pixels where it is the label
    attributes: list[str] = Field(default_factory=list)  # reasoning already held (image, else generic)


class AmbiguousRegion(BaseModel):
    id: str  # "r<round>.<rank>"
    round: int
    box: Box
    area: int
    mean_margin: float
    score: float  # area x (1 - mean margin): the ranking
    mask_key: str  # bool mask of the box's pixels, in the artifact store
    at_border: bool
    competing: list[RegionEvidence]


def region_order(round_: int, region_id: str) -> tuple[int, int]:
    """Questions arrive in completion order; list them by round, then rank ("r2.3" -> (2, 3))."""
    return round_, int(region_id.rsplit(".", 1)[-1])


class RegionVerdict(BaseModel):
    """What the LMM (or a person) answers about one region. Untrusted: cleaned on the way in."""

    model_config = ConfigDict(extra="ignore")

    choice: str
    confidence: float = Field(ge=0, le=1)
    reason: str = ""

    @field_validator("choice", mode="before")
    @classmethod
    def _choice(cls, value: object) -> str:
        text = _clean_text(value, 120)
        if not text:
            raise ValueError("choice must name one of the classes, or say none of these")
        return text

    @field_validator("confidence", mode="before")
    @classmethod
    def _confidence(cls, value: object) -> float:
        if isinstance(value, bool):
            raise ValueError("confidence must be a number from 0 to 1")
        if isinstance(value, str):
            text = value.strip().rstrip("%").strip()
            percent = value.strip().endswith("%")
            try:
                value = float(text) / (100 if percent else 1)
            except ValueError:
                raise ValueError("confidence must be a number from 0 to 1") from None
        if isinstance(value, (int, float)) and 1 < value <= 100:
            value = value / 100  # "85" means 85%
        return value

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: object) -> str:
        return _clean_text(value, MAX_TEXT)


Verdict = Literal["class", "none_of_these", "rejected", "no_answer"]


class RegionAnswer(BaseModel):
    """One region question and what came of it, as the trace shows it."""

    region_id: str
    round: int
    source: Literal["lmm", "human"]
    question: str
    crop_key: str
    context_key: str | None = None  # the full image with the box, when it was shown
    verdict: Verdict
    raw_choice: str | None = None
    choice: str | None = None  # a competing class when verdict == "class"
    alignment: NameAlignment | None = None
    confidence: float | None = None
    reason: str = ""
    lmm_calls: int = 0
    note: str = ""


class RegionChange(BaseModel):
    """What applying one answer did to the label map."""

    region_id: str
    round: int
    action: Literal["relabel", "reweight", "unknown", "unchanged"]
    why: str
    to_class: str | None = None
    pixels_changed: int = 0
    from_classes: dict[str, int] = Field(default_factory=dict)


class SelfCheckRound(BaseModel):
    round: int
    regions: list[AmbiguousRegion]  # asked about this round
    call_allowance: dict[str, int] = Field(default_factory=dict)  # LMM calls each region may use
    left_over_k: int = 0  # found but not asked: beyond the top K
    left_over_budget: int = 0  # found but not asked: the call budget did not cover them


def final_output(segmentation: SegmentationOutput, self_check: "SelfCheckState | None") -> SegmentationOutput:
    """The arrays after the self-check when it ran, else the segmenter's."""
    return self_check.output if self_check is not None else segmentation


class SelfCheckState(BaseModel):
    """The loop's state and its record. ``output`` holds the current label map."""

    output: SegmentationOutput
    asked_key: str | None = None  # bool (H, W): pixels already asked about, never asked again
    round: int = 0
    calls_used: int = 0
    rounds: list[SelfCheckRound] = Field(default_factory=list)
    changes: list[RegionChange] = Field(default_factory=list)
    stopped: str | None = None
    budget_exhausted: bool = False


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


DROPPED_ATTRIBUTES_USED = "the text attributes only"  # the fallback for an answer's non-text attributes


def dropped_attribute_fallbacks(step: str, reasoning: ClassReasoning, subject: str | None = None) -> list[Fallback]:
    """One recorded fallback when an answer's attribute list held items that are not text."""
    if not reasoning.dropped:
        return []
    return [
        Fallback(
            step=step,
            subject=subject or reasoning.name,
            reason=f"{len(reasoning.dropped)} attribute(s) were not text: " + "; ".join(reasoning.dropped),
            used=DROPPED_ATTRIBUTES_USED,
        )
    ]


class NodeTiming(BaseModel):
    node: str
    seconds: float
