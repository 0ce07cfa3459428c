"""``openseg-r reason``: precompute generic reasoning into the cache, export, import."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openseg_r.errors import ConfigError
from openseg_r.state import ClassReasoning, Vocabulary

EXIT_OK = 0


def run_reason(args: argparse.Namespace) -> int:
    if args.action == "generic":
        return _generic(args)
    if args.action == "export":
        return _export(args)
    return _import(args)


def _backend(args: argparse.Namespace):
    from openseg_r.lmm.spec import backend_from_spec, configured_spec

    spec = configured_spec(args.lmm)
    if spec.strip() == "none":
        raise ConfigError("give an LMM with --lmm (or OPENSEG_R_LMM / the config file)")
    return backend_from_spec(spec, record=args.lmm_record)


def _cache(value: str | None):
    from openseg_r.cache import SQLiteReasoningCache
    from openseg_r.cli import cache_path

    path = cache_path(value)
    if path is None:
        raise ConfigError("this command needs a cache file: give --cache PATH")
    return SQLiteReasoningCache(path)


def _generic(args: argparse.Namespace) -> int:
    """Ask about every class not yet cached, a few at a time; an interrupted run resumes."""
    from langgraph.runtime import Runtime
    from tqdm import tqdm

    from openseg_r.graph.context import OpenSegContext
    from openseg_r.nodes.generic_reasoning import GenericReasoningInput, generic_reasoning
    from openseg_r.vocab import load_named_vocabulary, parse_class_list

    vocabulary = parse_class_list(args.classes) if args.classes is not None else load_named_vocabulary(args.vocab)
    lmm = _backend(args)
    cache = _cache(args.cache)
    context = OpenSegContext(lmm=lmm, reasoning_cache=cache)
    classes = [c for c in vocabulary.classes if not c.is_background]
    failed: list[str] = []
    batch = max(1, context.max_concurrent_lmm_calls)
    with tqdm(total=len(classes), unit="class", desc="generic reasoning") as progress:
        for start in range(0, len(classes), batch):
            part = Vocabulary(name=vocabulary.name, classes=classes[start : start + batch])
            out = generic_reasoning(GenericReasoningInput(vocabulary=part), Runtime(context=context))
            failed += [f.subject for f in out.fallbacks]
            progress.update(len(part.classes))
    asked = cache.misses
    print(f"{len(classes)} classes: {cache.hits} already cached, {asked - len(failed)} reasoned now, {len(failed)} failed")
    if failed:
        print("failed (bare names will be used; run again to retry): " + ", ".join(failed[:20]))
    print(f"cache: {cache.path}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from openseg_r.lmm.upstream import to_generic_file

    cache = _cache(args.cache)
    models = cache.models("generic")
    model = args.model
    if model is None:
        if len(models) > 1:
            raise ConfigError("the cache holds reasoning of several models; pick one with --model: " + " | ".join(models))
        model = models[0] if models else None
    entries = cache.entries("generic", model) if model is not None else []
    if not entries:
        raise ConfigError(f"no generic reasoning in {cache.path}" + (f" for {model}" if model else ""))
    reasoning = {key["subject"]: value for key, value in entries}
    Path(args.out).write_text(json.dumps(to_generic_file(reasoning), indent=4, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(reasoning)} classes of {model} to {args.out}")
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    from openseg_r.lmm.upstream import load_generic_file
    from openseg_r.nodes.generic_reasoning import generic_cache_key

    lmm = _backend(args)
    cache = _cache(args.cache)
    entries = load_generic_file(args.file)
    for name, fields in entries.items():
        value = ClassReasoning.model_validate(fields | {"name": name})
        cache.put("generic", generic_cache_key(lmm, name), value.model_dump())
    print(f"imported {len(entries)} classes into {cache.path} for {lmm.cache_identity}")
    return EXIT_OK
