"""Resolve a backend spec string to a backend, the way ``--lmm`` takes it.

==========================================  ===============================================
spec                                        backend
==========================================  ===============================================
``none``                                    no LMM (reasoning falls back to bare names)
``scripted:answers.json``                   answers from a JSON file (tests, demos)
``replay:run.jsonl``                        answers recorded by ``--lmm-record``
``replay:pc59_class_reason.json``           an upstream OpenSeg-R generic-reasoning file
``replay:DIR``                              a folder of upstream per-image files
``openai:MODEL@http://127.0.0.1:8000/v1``   any OpenAI-compatible server (vLLM, SGLang, ...)
``openai:gpt-4o``                           OpenAI itself (key from ``OPENAI_API_KEY``)
``ollama:qwen2.5vl:7b[@URL]``               Ollama's /v1 API (default ``http://127.0.0.1:11434/v1``)
``hf:Qwen/Qwen2.5-VL-3B-Instruct``          a local transformers model (folder or cached repo)
``hf:/path/model.gguf``                     a local GGUF text model through transformers
==========================================  ===============================================

Where the spec comes from, first found wins: the ``--lmm`` option or the ``lmm``
argument; the ``OPENSEG_R_LMM`` environment variable; ``lmm = "..."`` in the config
file (``$OPENSEG_R_CONFIG``, else ``~/.config/openseg-r/config.toml``), or ``spec`` in
its ``[lmm]`` table; ``none``.

How the backend is called (:class:`~openseg_r.config.settings.LMMOptions`: ``max_tokens``,
``timeout``, ``temperature``, ``max_attempts``, ``concurrency``) comes from the config
file's ``[lmm]`` table, with ``--lmm-option key=value`` or ``lmm_options=`` over it key
by key::

    [lmm]
    spec = "openai:Qwen/Qwen2.5-VL-7B-Instruct@http://127.0.0.1:8000/v1"
    max_tokens = 512
    timeout = 60
"""

from __future__ import annotations

import os
from pathlib import Path

from openseg_r.config.file import config_file, read_config
from openseg_r.config.settings import LMMOptions
from openseg_r.errors import ConfigError
from openseg_r.lmm.base import BaseLMMBackend, NoLMM

KINDS = ("none", "scripted", "replay", "openai", "ollama", "hf")
SPEC_KEY = "spec"  # the spec's key inside the config file's [lmm] table


def configured_spec(explicit: str | None = None) -> str:
    """The spec in force: explicit, else the environment, else the config file, else none."""
    if explicit:
        return explicit
    if os.environ.get("OPENSEG_R_LMM"):
        return os.environ["OPENSEG_R_LMM"]
    value = read_config().get("lmm", "none")
    if isinstance(value, dict):
        value = value.get(SPEC_KEY, "none")
        if not isinstance(value, str):
            raise ConfigError(f"'{SPEC_KEY}' in the [lmm] table of {config_file()} must be a string spec")
    if not isinstance(value, str):
        raise ConfigError(f"'lmm' in {config_file()} must be a string spec or an [lmm] table")
    return value


def config_options() -> LMMOptions:
    """The call options of the config file's ``[lmm]`` table (none when it has no table)."""
    table = read_config().get("lmm")
    if not isinstance(table, dict):
        return LMMOptions()
    values = {key: value for key, value in table.items() if key != SPEC_KEY}
    return LMMOptions.parse(values, source=f"the [lmm] table of {config_file()}")


def configured_options(explicit: LMMOptions | dict | None = None) -> LMMOptions:
    """The options in force: ``explicit`` (flags, keyword arguments) over the config file's."""
    return LMMOptions.parse(explicit).over(config_options())


def names_an_lmm(spec: str | None) -> bool:
    """Whether a spec names a backend (anything but ``none`` or nothing)."""
    return (spec or "none").strip() != "none"


def backend_from_spec(
    spec: str | BaseLMMBackend | None, record: str | Path | None = None, options: LMMOptions | dict | None = None
) -> BaseLMMBackend:
    """Build the backend; with ``record``, every call is appended to that JSONL file.
    ``options`` (:class:`~openseg_r.config.settings.LMMOptions` or a dict of them) set how it is
    called; a backend object given as ``spec`` takes them too."""
    options = LMMOptions.parse(options)
    backend = spec if isinstance(spec, BaseLMMBackend) else _build(spec)
    if isinstance(spec, str):
        backend.spec = spec.strip()  # recorded with runs, to build the same backend again
    if options.given():
        if not hasattr(backend, "apply_options"):
            raise ConfigError(f"{type(backend).__name__} takes no LMM options (it has no apply_options)")
        backend.apply_options(options)
    if record is not None:
        from openseg_r.lmm.replay import RecordingLMM

        backend = RecordingLMM(backend, record)
    return backend


def _build(spec: str | None) -> BaseLMMBackend:
    if not names_an_lmm(spec):
        return NoLMM()
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"bad LMM spec {spec!r}: expected KIND:VALUE with KIND one of {', '.join(KINDS)}")
    if kind == "scripted":
        from openseg_r.lmm.scripted import ScriptedLMM

        return ScriptedLMM(rest)
    if kind == "replay":
        from openseg_r.lmm.replay import ReplayLMM

        return ReplayLMM(rest)
    if kind in ("openai", "ollama"):
        from openseg_r.lmm.openai_compat import OLLAMA_URL, OpenAICompatibleLMM

        model, url = _split_url(rest)
        if kind == "ollama":
            url = url or os.environ.get("OLLAMA_BASE_URL") or OLLAMA_URL
        if not model:
            raise ConfigError(f"bad LMM spec {spec!r}: no model name")
        return OpenAICompatibleLMM(model, url, kind=kind)
    if kind == "hf":
        from openseg_r.lmm.hf_local import HuggingFaceLMM

        return HuggingFaceLMM(rest)
    raise ConfigError(f"unknown LMM backend {kind!r} in spec {spec!r}; available: {', '.join(KINDS)}")


def _split_url(rest: str) -> tuple[str, str | None]:
    """``MODEL@URL``; the model may itself contain ':' or '@' (Ollama tags)."""
    model, sep, url = rest.rpartition("@")
    if sep and url.startswith(("http://", "https://")):
        return model, url
    return rest, None
