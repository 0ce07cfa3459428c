"""How to build an :class:`~openseg_r.model.OpenSegR`: one typed recipe for every entry point.

``ModelOptions`` says which segmenter (a kind from :mod:`openseg_r.segmenters.registry`
and that kind's options), LMM backend, reasoning cache and limits a model is built with; :meth:`OpenSegR.from_options
<openseg_r.model.OpenSegR.from_options>` builds it. The command line, the servers,
the LangGraph app (from environment variables), ``runs replay/resume`` and the Python
API all end there, and every recorded run stores the options it was built with.

The defaults written here, in each segmenter kind's options model and in
:class:`~openseg_r.config.settings.Settings` are the only ones: command-line help reads them
from these models (docs/design.md §3.6).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from openseg_r._support.images import DEFAULT_MAX_PIXELS
from openseg_r.config.file import config_file, read_config
from openseg_r.config.settings import LMMOptions
from openseg_r.errors import ConfigError, describe_validation_error
from openseg_r.segmenters.registry import DEFAULT_KIND, get_kind, validated_options

Precision = Literal["auto", "fp32", "fp16", "bf16"]
MEMORY_CACHE = ("none", "memory", ":memory:", "")
USER_CACHE = "user"
DEFAULT_CONCURRENCY = 4  # images in flight at once in `segment` on many images and in `eval`
DEFAULT_CPUS_PER_ACTOR = 1.0  # Ray: CPUs an actor reserves; torch runs that many threads in it
DEFAULT_IMAGES_PER_TASK = 4  # Ray: images one actor call takes (not batch_size: images per forward pass)
# LMM calls in flight at once for one model: OpenAI-compatible servers (vLLM) batch concurrent
# requests, and ones that cannot (Ollama) queue them; concurrent images' generic and image
# reasoning together need this many to overlap fully.
DEFAULT_LMM_CONCURRENCY = 32


class ModelOptions(BaseModel):
    """Everything a model is built from, except per-run :class:`~openseg_r.config.settings.Settings`."""

    model_config = ConfigDict(extra="forbid")

    segmenter: str = Field(
        DEFAULT_KIND,
        description="the segmenter kind (openseg-r segmenters lists them; unset: the config file's "
        "[segmenter] table, else dense-clip)",
    )
    segmenter_options: SerializeAsAny[BaseModel] | None = Field(
        None,
        description="the kind's options (--segmenter-option KEY=VALUE, repeatable; unset keys: the config "
        "file's [segmenter] table, else the kind's defaults)",
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1 (unset: the GPU if there is one)")
    precision: Precision = Field(
        "auto", description="auto: fp16 on a GPU; on a CPU bf16 where it computes bf16 natively, else fp32"
    )
    lmm: str | None = Field(None, description="LMM backend spec (unset: $OPENSEG_R_LMM, the config file, else none)")
    lmm_record: str | None = Field(None, description="append every LMM call to this JSONL file")
    reasoning_cache: str | None = Field(
        USER_CACHE,
        description="SQLite reasoning cache: 'user' for the user cache dir, a file path, or 'none' for memory only",
    )
    aligner: str = Field(
        "clip", description="embeddings for the class aligner: clip, minilm, or a sentence-transformers model"
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse larger images")
    text_cache: str | None = Field(
        USER_CACHE,
        description="SQLite text-embedding cache: 'user' for the user cache dir, a file path, or 'none' (memory)",
    )
    batch_size: int = Field(
        8, ge=1, le=1024, description="images per forward pass when several segmentations run at once (1: no batching)"
    )
    batch_wait_ms: float = Field(
        5.0, ge=0, le=10_000, description="how long a forward pass waits for more images to fill its batch"
    )
    lmm_concurrency: int | None = Field(
        None,
        ge=1,
        le=256,
        description="LMM calls in flight at once, over all images (unset: the LMM option "
        f"concurrency, from --lmm-option or the config file's [lmm] table, else {DEFAULT_LMM_CONCURRENCY})",
    )
    lmm_options: LMMOptions | None = Field(
        None,
        description="how the LMM is called: max_tokens, timeout, temperature, max_attempts, concurrency "
        "(--lmm-option KEY=VALUE, repeatable; unset keys: the config file's [lmm] table, else the backend's)",
    )
    runs_db: str | None = Field(None, description="record every run in this runs database (unset: no recording)")
    redact: bool = Field(False, description="keep images out of the runs database (hashes only)")

    @model_validator(mode="before")
    @classmethod
    def _segmenter_kind_and_options(cls, data: object) -> object:
        """The kind (given, else the config file's ``[segmenter]`` table, else the default) and
        its options checked by the kind's own model: the table's options, then those given."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        table = _config_table()
        name = data.get("segmenter") or table.get("kind") or DEFAULT_KIND
        kind = get_kind(name)
        given = data.get("segmenter_options")
        own = {k: data.pop(k) for k in list(data) if k not in cls.model_fields and k in kind.options.model_fields}
        if own:  # ModelOptions(clip_model=...): the kind's options given by name
            given = (given.model_dump() if isinstance(given, BaseModel) else dict(given or {})) | own
        if isinstance(given, BaseModel):
            given = given.model_dump() if not isinstance(given, kind.options) else given
        from_table = {k: v for k, v in table.items() if k != "kind"} if table.get("kind", name) == name else {}
        if isinstance(given, kind.options) and not from_table:
            data["segmenter_options"] = given
        else:
            data["segmenter_options"] = validated_options(kind, from_table | dict(given or {}))
        data["segmenter"] = kind.name
        return data

    @field_validator("reasoning_cache", "text_cache", mode="before")
    @classmethod
    def _memory_cache(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip().lower() in MEMORY_CACHE):
            return None
        return str(value)

    @field_validator("lmm_options", mode="before")
    @classmethod
    def _lmm_option_pairs(cls, value: object) -> object:
        """``--lmm-option`` gives ``["key=value", ...]``; a bad key or value is a ConfigError
        that names the valid keys (it passes through pydantic unchanged)."""
        if value is None or isinstance(value, LMMOptions):
            return value
        if isinstance(value, (list, tuple)):
            return LMMOptions.from_pairs(value)
        return LMMOptions.parse(value)

    @model_validator(mode="after")
    def _one_lmm_concurrency(self) -> "ModelOptions":
        """``lmm_concurrency`` and the LMM option ``concurrency`` are one setting."""
        wanted = self.lmm_options.concurrency if self.lmm_options is not None else None
        if wanted is not None:
            if self.lmm_concurrency is not None and self.lmm_concurrency != wanted:
                raise ConfigError(
                    f"--lmm-concurrency {self.lmm_concurrency} and the LMM option concurrency={wanted} "
                    "disagree: give one of them"
                )
            self.lmm_concurrency = wanted
        return self

    @classmethod
    def build(cls, **values) -> "ModelOptions":
        """Validated options from keyword values where None means "the default" (as an
        unset command-line flag), with a one-line :class:`ConfigError` on a bad value."""
        return cls.validated(_given(_routed(values, None)))

    @classmethod
    def validated(cls, data: dict) -> "ModelOptions":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid model option: {describe_validation_error(exc)}") from None

    @classmethod
    def from_environment(cls, environ: dict | None = None) -> "ModelOptions":
        """For servers started without a command line (``langgraph dev``): ``OPENSEG_R_SEGMENTER``,
        ``OPENSEG_R_CLIP_MODEL``, ``OPENSEG_R_CLIP_PRETRAINED``, ``OPENSEG_R_ATTENTION`` (dense-clip's),
        ``OPENSEG_R_DEVICE``, ``OPENSEG_R_PRECISION``, ``OPENSEG_R_CACHE``, ``OPENSEG_R_RUNS_DB``,
        ``OPENSEG_R_TEXT_CACHE``, ``OPENSEG_R_BATCH_SIZE``, ``OPENSEG_R_BATCH_WAIT_MS``, ``OPENSEG_R_LMM_CONCURRENCY``;
        the LMM comes from ``OPENSEG_R_LMM`` or the config file as everywhere else."""
        env = os.environ if environ is None else environ
        read = lambda name: env.get(f"OPENSEG_R_{name}") or None  # noqa: E731
        segmenter_options = {
            "clip_model": read("CLIP_MODEL"),
            "clip_pretrained": read("CLIP_PRETRAINED"),
            "attention": read("ATTENTION"),
        }
        return cls.build(
            segmenter=read("SEGMENTER"),
            segmenter_options={k: v for k, v in segmenter_options.items() if v is not None} or None,
            device=read("DEVICE"),
            precision=read("PRECISION"),
            reasoning_cache=read("CACHE"),
            runs_db=read("RUNS_DB"),
            text_cache=read("TEXT_CACHE"),
            batch_size=read("BATCH_SIZE"),
            batch_wait_ms=read("BATCH_WAIT_MS"),
            lmm_concurrency=read("LMM_CONCURRENCY"),
        )

    def recorded(self) -> dict:
        """What a recorded run keeps: how to compute the same thing again (not where it wrote)."""
        return {"format": RECORD_FORMAT, **self.model_dump(mode="json", exclude={"lmm_record", "runs_db"})}

    @classmethod
    def from_recorded(cls, stored: dict) -> "ModelOptions":
        """The options a run was recorded with, from this format or the one before it (an
        untyped dict with ``segmenter_config``); a clear error for anything else."""
        stored = dict(stored or {})
        if not stored:
            raise ConfigError("this run was recorded without its model options; give --segmenter and its options")
        version = stored.pop("format", 1)
        if version == 1:
            stored = _from_first_format(stored)
        if version in (1, 2):
            stored = _from_second_format(stored)
        elif version != RECORD_FORMAT:
            raise ConfigError(
                f"this run's model options are in format {version!r}, newer than this openseg-r reads "
                f"({RECORD_FORMAT}); upgrade openseg-r"
            )
        kind = stored.get("segmenter")
        if isinstance(kind, str) and kind.startswith(UNREGISTERED):
            raise ConfigError(
                f"this run was made with an injected segmenter ({kind.removeprefix(UNREGISTERED)}) that "
                "no registry names, so it cannot be built again: register it (an openseg_r.segmenters "
                "entry point) or give --segmenter"
            )
        try:
            return cls.model_validate(stored)
        except ValidationError as exc:
            raise ConfigError(
                f"cannot read this run's recorded model options: {describe_validation_error(exc)}"
            ) from None
        except ConfigError as exc:
            raise ConfigError(f"cannot read this run's recorded model options: {exc}") from None

    def with_overrides(self, **values) -> "ModelOptions":
        """These options with the non-None ``values`` replaced: ``segmenter_options`` and LMM
        options key by key (a new ``segmenter`` kind starts from that kind's defaults)."""
        given = _given(_routed(values, self.segmenter))
        base = self.model_dump()
        same_kind = given.get("segmenter", self.segmenter) == self.segmenter
        kept = self.segmenter_options.model_dump() if same_kind else {}
        base["segmenter_options"] = kept | dict(given.pop("segmenter_options", None) or {})
        if "lmm_options" in given:
            new = self.__class__._lmm_option_pairs(given["lmm_options"])
            given["lmm_options"] = new.over(self.lmm_options)
            if new.concurrency is not None and "lmm_concurrency" not in given:
                base["lmm_concurrency"] = None  # the new concurrency replaces the old one
        return self.validated(base | given)

    @property
    def kind(self):
        """The registry entry of this segmenter kind."""
        return get_kind(self.segmenter)


RECORD_FORMAT = 3
UNREGISTERED = "unregistered:"  # the recorded kind of a segmenter object passed in, that no registry names


def _config_table() -> dict:
    """The config file's ``[segmenter]`` table (``kind`` and that kind's options), or {}."""
    table = read_config().get("segmenter", {})
    if not isinstance(table, dict):
        raise ConfigError(f"'segmenter' in {config_file()} must be a [segmenter] table")
    return table


def _routed(values: dict, current_kind: str | None) -> dict:
    """Keyword convenience: a value named after an option of the segmenter kind
    (``clip_model=...``, ``attention=...``) goes into ``segmenter_options``; a name that is
    neither a ModelOptions field nor such an option is a one-line ConfigError."""
    extra = {k: v for k, v in values.items() if k not in ModelOptions.model_fields}
    if not extra:
        return values
    kind = get_kind(values.get("segmenter") or current_kind or _config_table().get("kind") or DEFAULT_KIND)
    unknown = sorted(k for k in extra if k not in kind.options.model_fields)
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r}: the options are ModelOptions' fields "
            f"({', '.join(ModelOptions.model_fields)}) and the {kind.name} segmenter's "
            f"({', '.join(kind.options.model_fields)})"
        )
    routed = {k: v for k, v in values.items() if k in ModelOptions.model_fields}
    options = values.get("segmenter_options") or {}
    options = options.model_dump() if isinstance(options, BaseModel) else dict(options)
    routed["segmenter_options"] = options | {k: v for k, v in extra.items() if v is not None}
    return routed


def _given(values: dict) -> dict:
    """The values that were given (not None), the segmenter's options included."""
    options = values.get("segmenter_options") or {}
    if isinstance(options, BaseModel):
        options = options.model_dump()
    given = {k: v for k, v in values.items() if v is not None and k != "segmenter_options"}
    options = {k: v for k, v in options.items() if v is not None}
    return given | ({"segmenter_options": options} if options else {})


def _from_first_format(stored: dict) -> dict:
    """Runs recorded before ModelOptions kept ``clip_model``, ``clip_pretrained``, ``device``,
    ``precision``, ``lmm`` (a spec, or only a backend's name) and ``segmenter_config``."""
    known = {"clip_model", "clip_pretrained", "device", "precision", "lmm", "segmenter_config"}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ConfigError(f"cannot read this run's recorded model options (unknown fields: {', '.join(unknown)})")
    lmm = stored.get("lmm")
    # That format kept a backend's bare name ("scripted") when it was given as an object;
    # a name is no spec, so such a run replays without an LMM unless --lmm says otherwise.
    spec = lmm if isinstance(lmm, str) and (lmm.strip() == "none" or ":" in lmm) else None
    optional = {
        "clip_model": stored.get("clip_model"),
        "device": stored.get("device"),
        "precision": stored.get("precision"),
    }
    return {k: v for k, v in optional.items() if v is not None} | {
        "clip_pretrained": stored.get("clip_pretrained"),  # None here meant random weights, as it does now
        "lmm": spec or "none",
        "segmenter": stored.get("segmenter_config") or {},
        "reasoning_cache": None,  # such runs were replayed with reasoning in memory
    }


def upgraded_record(stored: dict) -> dict:
    """A recorded options dict (or part of one) in this format: older formats' dense-CLIP
    fields move into ``segmenter_options``."""
    stored = dict(stored)
    version = stored.pop("format", 1)
    if version == 1 and "segmenter_config" in stored:
        stored = _from_first_format(stored)
    if version in (1, 2) and "segmenter_options" not in stored:
        stored = _from_second_format(stored)
    return stored | {"format": version if version not in (1, 2) else RECORD_FORMAT}


def _from_second_format(stored: dict) -> dict:
    """Format 2 kept the dense-CLIP model at the top (``clip_model``, ``clip_pretrained``,
    ``segmenter`` for its inference settings): it is the ``dense-clip`` kind's options now."""
    stored = dict(stored)
    options = dict(stored.pop("segmenter", None) or {})
    for key in ("clip_model", "clip_pretrained"):
        if key in stored:
            options[key] = stored.pop(key)
    return stored | {"segmenter": "dense-clip", "segmenter_options": options}


def field_default(model: type[BaseModel], name: str) -> object:
    """A field's default as help texts show it."""
    field = model.model_fields[name]
    return field.get_default(call_default_factory=True)


def checked_cpus_per_actor(cpus: float) -> float:
    """``--cpus-per-actor``, checked: a positive number of CPUs (Ray accepts fractions)."""
    from openseg_r.errors import ConfigError

    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not cpus > 0 or cpus == float("inf"):
        raise ConfigError(f"--cpus-per-actor must be a positive number of CPUs, got {cpus!r}")
    return float(cpus)
