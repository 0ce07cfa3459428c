"""LMM backends behind one interface (see :mod:`openseg_r.lmm.base`)."""

from openseg_r.lmm.base import BaseLMMBackend, LMMReply, LMMRequest, NoLMM
from openseg_r.lmm.parsing import StructuredOutputError, extract_json, parse_structured
from openseg_r.lmm.scripted import ScriptedLMM
from openseg_r.lmm.spec import backend_from_spec

__all__ = [
    "BaseLMMBackend",
    "LMMReply",
    "LMMRequest",
    "NoLMM",
    "ScriptedLMM",
    "StructuredOutputError",
    "backend_from_spec",
    "extract_json",
    "parse_structured",
]
