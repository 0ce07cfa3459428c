"""Segmenters by name: kind -> its options model, its factory, how it is described.

One entry point turns a name and options into a segmenter, as open_clip's factory and
SAM's ``build_sam`` do: :func:`build_segmenter`. The built-in kinds are listed in
:data:`BUILT_IN`; third-party ones register an entry point in the ``openseg_r.segmenters``
group whose value is a :class:`~openseg_r.segmenters.base.SegmenterKind`::

    [project.entry-points."openseg_r.segmenters"]
    my-kind = "my_package.segmenter:KIND"

Every entry point of openseg-r (the command line, the servers, the LangGraph app, Ray's
actors, ``runs replay/resume``) builds through here, and every recorded run keeps the
kind and its options, so the same segmenter is built again.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

from pydantic import BaseModel, ValidationError

from openseg_r._support.pairs import key_value_pairs
from openseg_r.errors import ConfigError, clipped, describe_validation_error
from openseg_r.segmenters.base import BuildRequest, Segmenter, SegmenterKind
from openseg_r.segmenters.dense_clip.options import DENSE_CLIP
from openseg_r.segmenters.proxyclip.options import PROXYCLIP
from openseg_r.segmenters.sam3.options import SAM3

ENTRY_POINT_GROUP = "openseg_r.segmenters"
DEFAULT_KIND = DENSE_CLIP.name
BUILT_IN: dict[str, SegmenterKind] = {DENSE_CLIP.name: DENSE_CLIP, PROXYCLIP.name: PROXYCLIP, SAM3.name: SAM3}

_found: dict[tuple, tuple[dict, dict]] = {}  # sys.path -> (plugins, broken ones' errors)


def _plugins() -> tuple[dict[str, SegmenterKind], dict[str, str]]:
    """Kinds registered by installed distributions (looked up again when sys.path changes)."""
    key = tuple(sys.path)
    if key not in _found:
        plugins, broken = {}, {}
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in BUILT_IN or entry.name in plugins:
                continue  # a built-in name cannot be taken over
            try:
                kind = entry.load()
            except Exception as exc:  # a broken plugin is reported when chosen, never breaks the others
                broken[entry.name] = f"{entry.value} does not load: {type(exc).__name__}: {clipped(str(exc), 200)}"
                continue
            if not isinstance(kind, SegmenterKind) or kind.name != entry.name:
                broken[entry.name] = (
                    f"{entry.value} is not a SegmenterKind named {entry.name!r} "
                    "(see openseg_r.segmenters.base.SegmenterKind)"
                )
                continue
            dist = getattr(entry, "dist", None)
            origin = f"plugin: {dist.name} {dist.version}" if dist is not None else f"plugin: {entry.value}"
            plugins[entry.name] = SegmenterKind(**{**kind.__dict__, "origin": origin})
        _found.clear()
        _found[key] = (plugins, broken)
    return _found[key]


def kinds() -> dict[str, SegmenterKind]:
    """Every kind this installation knows: the built-in ones first, then plugins by name."""
    plugins, _ = _plugins()
    return BUILT_IN | dict(sorted(plugins.items()))


def get_kind(name: str) -> SegmenterKind:
    """The kind called ``name``; a one-line ConfigError naming the known ones otherwise."""
    if not isinstance(name, str):
        raise ConfigError(f"a segmenter kind is a name, got {type(name).__name__}")
    name = name.strip()
    known = kinds()
    if name in known:
        return known[name]
    _, broken = _plugins()
    if name in broken:
        raise ConfigError(f"segmenter {name!r} is registered but broken: {broken[name]}")
    raise ConfigError(
        f"unknown segmenter {clipped(name, 60)!r}; known: {', '.join(known)} "
        f"(plugins register an entry point in the {ENTRY_POINT_GROUP} group)"
    )


def validated_options(kind: SegmenterKind, values: BaseModel | dict | None) -> BaseModel:
    """``values`` (a dict, or the kind's options model) checked against the kind's options,
    with a one-line ConfigError that names the valid keys."""
    if isinstance(values, kind.options):
        return values
    if isinstance(values, BaseModel):
        values = values.model_dump()
    values = dict(values or {})
    valid = ", ".join(kind.options.model_fields)
    unknown = [str(key) for key in values if key not in kind.options.model_fields]
    if unknown:
        raise ConfigError(
            f"unknown option {clipped(unknown[0], 40)!r} for the {kind.name} segmenter; valid options: {valid}"
        )
    try:
        return kind.options.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid {kind.name} segmenter option: {describe_validation_error(exc)}") from None


def option_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["attention=sclip", "short_side=448"]`` as ``--segmenter-option`` gives them (the
    last of a key given twice wins); the kind's options model converts the values."""
    return key_value_pairs(pairs, "--segmenter-option")


def build_segmenter(
    name: str, options: BaseModel | dict | None = None, request: BuildRequest | None = None
) -> Segmenter:
    """The one way a segmenter is made from a name: checked options, then the kind's factory."""
    kind = get_kind(name)
    checked = validated_options(kind, options)
    factory = kind.build
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:  # a plugin whose factory moved or whose extra is missing
            raise ConfigError(
                f"the {kind.name} segmenter cannot be built: {kind.build} does not load "
                f"({type(exc).__name__}: {clipped(str(exc), 200)})"
            ) from None
    segmenter = factory(checked, request or BuildRequest())
    if not isinstance(segmenter, Segmenter):
        raise ConfigError(
            f"the {kind.name} segmenter's factory returned {type(segmenter).__name__}, which is not "
            "a segmenter (query_bank, segment, describe)"
        )
    return segmenter


def describe_kinds() -> list[dict]:
    """Every kind with its options, defaults and help: what ``openseg-r segmenters`` shows."""
    _, broken = _plugins()
    listed = []
    for kind in kinds().values():
        options = []
        for name, field in kind.options.model_fields.items():
            default = field.get_default(call_default_factory=True)
            options.append(
                {
                    "name": name,
                    "default": default if not isinstance(default, tuple) else list(default),
                    "help": field.description or "",
                    "speed_only": name in kind.speed_only,
                }
            )
        listed.append(
            {
                "kind": kind.name,
                "summary": kind.summary,
                "origin": kind.origin,
                "options": options,
                "variants": {key: list(values) for key, values in kind.variants.items()},
            }
        )
    listed += [
        {"kind": name, "summary": f"broken: {reason}", "origin": "plugin", "options": [], "variants": {}}
        for name, reason in sorted(broken.items())
    ]
    return listed
