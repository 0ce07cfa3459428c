"""Per-run settings (:class:`Settings`, recorded in the trace), how an LMM is called
(:class:`LMMOptions`), and the one merge rule for overrides (:func:`merged_settings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openseg_r._support.pairs import key_value_pairs
from openseg_r.errors import ConfigError, clipped, describe_validation_error
from openseg_r.schemas import MAX_ATTRIBUTES, ScoreOrder
from openseg_r.segmenters.base import FilterMode


class SelfCheckSettings(BaseModel):
    """The self-check loop (off by default): ask about ambiguous regions, then apply the answers.

    A region is a connected set of pixels whose top two classes are the same pair
    and whose top-2 probability margin is under ``margin_threshold``, with an area
    of at least ``min_area_pixels`` and ``min_area_fraction`` of the image.
    """

    enabled: bool = False
    mode: Literal["lmm", "human"] = "lmm"  # human: LangGraph interrupt, resumed with Command(resume=...)
    top_k: int = Field(3, ge=0, le=50)  # regions asked about per round
    rounds: int = Field(2, ge=0, le=10)
    max_calls: int = Field(8, ge=0, le=1000)  # hard budget of LMM calls per image, re-asks included
    margin_threshold: float = Field(0.15, ge=0, le=1)
    min_area_pixels: int = Field(64, ge=1)
    min_area_fraction: float = Field(0.002, ge=0, le=1)
    min_confidence: float = Field(0.6, ge=0, le=1)  # answers below it change nothing
    apply: Literal["relabel", "reweight"] = "relabel"
    reweight_factor: float = Field(2.0, gt=1, le=100)
    none_policy: Literal["keep", "unknown"] = "keep"
    context: float = Field(0.5, ge=0, le=4)  # crop margin on each side, as a fraction of the region's box
    min_crop: int = Field(96, ge=8, le=4096)  # smallest crop side in image pixels (small regions get context)
    full_image: bool = False  # also show the LMM the whole image with the region's box drawn


class Settings(BaseModel):
    """Per-run settings that change the result (recorded in the trace)."""

    reasoning: bool = True
    n_attributes: int = Field(3, ge=1, le=MAX_ATTRIBUTES)
    include_bare_slot: bool = False
    templates: Literal["vild", "imagenet"] = "vild"
    score_order: ScoreOrder = "max_then_softmax"
    logit_scale: float = Field(40.0, gt=0)
    class_filter: FilterMode = "hard"
    soft_filter_weight: float = Field(0.3, gt=0, le=1)
    background_threshold: float = Field(0.1, ge=0, le=1)
    image_reasoning_mode: Literal["single", "chain"] = "single"
    use_image_reasoning: bool = True  # False: generic reasoning only (no image call, no class filter)
    align_threshold: float = Field(0.85, ge=-1, le=2)  # cosine; above 1 turns embedding matching off
    self_check: SelfCheckSettings = Field(default_factory=SelfCheckSettings)
    # What a run that asked for reasoning but got none at all (every LMM call failed) does:
    # False raises ReasoningUnavailableError (the CLI exits 4); True keeps the bare-name result.
    # It changes no pixel, so resume checks ignore it.
    allow_fallback: bool = False


# Settings fields that change no result: runs may resume with another value.
POLICY_ONLY_SETTINGS = frozenset({"allow_fallback"})


class LMMOptions(BaseModel):
    """How an LMM backend is called (``--lmm-option key=value``, the config file's ``[lmm]``
    table, ``lmm_options=`` in Python). None leaves the backend's own default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="the most tokens one answer may have (default: 1024 for servers, 512 for hf models)",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="seconds one request may take (servers: the HTTP timeout, default 120; hf: generation time, "
        "default none)",
    )
    temperature: float | None = Field(
        None, ge=0, le=2, description="sampling temperature; 0 is greedy and deterministic (default: 0)"
    )
    max_attempts: int | None = Field(
        None, ge=1, le=10, description="asks per question, re-asks after an unusable answer included (default: 2)"
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=256,
        description="LMM calls in flight at once, over all images (the same as --lmm-concurrency; default: 32)",
    )

    def given(self) -> dict:
        """The options that were set (not None)."""
        return {key: value for key, value in self.model_dump().items() if value is not None}

    def over(self, base: "LMMOptions | None") -> "LMMOptions":
        """These options, with ``base``'s where these leave one unset."""
        return self if base is None else LMMOptions(**(base.given() | self.given()))

    @classmethod
    def keys(cls) -> str:
        return ", ".join(cls.model_fields)

    @classmethod
    def from_pairs(cls, pairs: "list[str] | tuple[str, ...]") -> "LMMOptions":
        """``["max_tokens=256", "timeout=30"]`` as ``--lmm-option`` gives them (a key given
        twice: the last one wins)."""
        return cls.parse(key_value_pairs(pairs, "--lmm-option", f"; valid keys: {cls.keys()}"))

    @classmethod
    def parse(cls, value: "LMMOptions | dict | None", source: str | None = None) -> "LMMOptions":
        """Validated options, with a one-line ConfigError that names the valid keys;
        ``source`` says where they were written (the config file's ``[lmm]`` table)."""
        where = f" in {source}" if source else ""
        if value is None:
            return cls()
        if isinstance(value, LMMOptions):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"LMM options{where} must be key = value pairs; valid keys: {cls.keys()}")
        unknown = [str(key) for key in value if key not in cls.model_fields]
        if unknown:
            raise ConfigError(f"unknown LMM option {clipped(unknown[0], 40)!r}{where}; valid keys: {cls.keys()}")
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            raise ConfigError(
                f"invalid LMM option{where}: {describe_validation_error(exc)}; valid keys: {cls.keys()}"
            ) from None


def merged_settings(base: Settings, overrides: dict) -> Settings:
    """``overrides`` over ``base``, the one merge rule everywhere: a dict merges into a
    nested model key by key (``self_check={"enabled": True}`` keeps the ``top_k`` that
    ``base`` had); any other value replaces. A bad value is a one-line ConfigError."""
    try:
        return Settings.model_validate(_deep_merge(base.model_dump(), overrides))
    except ValidationError as exc:
        raise ConfigError(f"invalid setting: {describe_validation_error(exc)}") from None


def _deep_merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _deep_merge(base[key], value) if nested else value
    return merged
