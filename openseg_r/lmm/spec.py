"""Resolve a backend spec string (``--lmm``) to a backend object.

Specs: ``none`` (no LMM) and ``scripted:PATH.json`` (answers from a file).
"""

from __future__ import annotations

from openseg_r.errors import ConfigError
from openseg_r.lmm.base import LMMBackend, NoLMM
from openseg_r.lmm.scripted import ScriptedLMM

KNOWN_SPECS = "none, scripted:PATH.json"


def backend_from_spec(spec: str | LMMBackend | None) -> LMMBackend:
    if isinstance(spec, LMMBackend):
        return spec
    if spec is None or spec.strip() in ("", "none"):
        return NoLMM()
    kind, _, rest = spec.strip().partition(":")
    if kind == "scripted":
        if not rest:
            raise ConfigError("the scripted backend needs a file: scripted:PATH.json")
        return ScriptedLMM(rest)
    raise ConfigError(f"unknown LMM backend spec {spec!r}; available: {KNOWN_SPECS}")
