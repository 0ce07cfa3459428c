"""``openseg-r reason``: precompute generic reasoning into the cache, export, import."""

from __future__ import annotations

import argparse

from openseg_r.cli.options import EXIT_OK, Parser, add_lmm_options


def add_parsers(commands) -> None:
    reason = commands.add_parser("reason", help="precompute, export or import reasoning")
    actions = reason.add_subparsers(dest="action", required=True, parser_class=Parser)
    generic = actions.add_parser("generic", help="generic reasoning for a vocabulary into the cache (resumable)")
    which = generic.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help='comma-separated classes, "|" between synonyms: "cat, sofa|couch"')
    which.add_argument("--vocab", help="a built-in vocabulary name (see `openseg-r vocabularies`) or a text file")
    add_lmm_options(generic)
    generic.set_defaults(handler=run_generic)
    export = actions.add_parser("export", help="write cached generic reasoning in the upstream JSON format")
    export.add_argument(
        "--cache",
        default=None,
        help="the SQLite reasoning cache: 'user' for the user cache file, or a file path (default: user)",
    )
    export.add_argument("--model", default=None, help="which model's reasoning, when the cache holds several")
    export.add_argument("-o", "--out", required=True, help="the JSON file to write")
    export.set_defaults(handler=run_export)
    imported = actions.add_parser("import", help="load an upstream generic-reasoning JSON into the cache")
    imported.add_argument("file", help="a JSON file in the upstream format (as `reason export` writes it)")
    add_lmm_options(imported)
    imported.set_defaults(handler=run_import)


def _backend(args: argparse.Namespace):
    from openseg_r.errors import ConfigError
    from openseg_r.lmm.spec import backend_from_spec, configured_spec, names_an_lmm

    spec = configured_spec(args.lmm)
    if not names_an_lmm(spec):
        raise ConfigError("give an LMM with --lmm (or OPENSEG_R_LMM / the config file)")
    options = _lmm_options(args).model_copy(update={"concurrency": None})
    return backend_from_spec(spec, record=getattr(args, "lmm_record", None), options=options)


def _lmm_options(args: argparse.Namespace):
    """--lmm-option over the config file's [lmm] table."""
    from openseg_r.config.settings import LMMOptions
    from openseg_r.lmm.spec import configured_options

    return configured_options(LMMOptions.from_pairs(getattr(args, "lmm_option", None) or []))


def _cache_file(args: argparse.Namespace):
    """The SQLite cache that --cache names (the user cache by default), by the same rule as every model."""
    from openseg_r._support.cache import SQLiteReasoningCache, open_reasoning_cache
    from openseg_r.cli.options import model_options
    from openseg_r.errors import ConfigError

    cache = open_reasoning_cache(model_options(args).reasoning_cache, has_lmm=True)
    if not isinstance(cache, SQLiteReasoningCache):
        raise ConfigError("this command needs a cache file: give --cache PATH")
    return cache


def run_generic(args: argparse.Namespace) -> int:
    """Ask about every class not yet cached, a few at a time; an interrupted run resumes."""
    from tqdm import tqdm

    from openseg_r.nodes.context import OpenSegContext
    from openseg_r.nodes.generic_reasoning import reason_generic_ahead
    from openseg_r.vocab import load_named_vocabulary, parse_class_list

    vocabulary = parse_class_list(args.classes) if args.classes is not None else load_named_vocabulary(args.vocab)
    lmm = _backend(args)
    cache = _cache_file(args)
    concurrency = _lmm_options(args).concurrency
    context = OpenSegContext(
        lmm=lmm, reasoning_cache=cache, **({"max_concurrent_lmm_calls": concurrency} if concurrency else {})
    )
    classes = [c for c in vocabulary.classes if not c.is_background]
    with tqdm(total=len(classes), unit="class", desc="generic reasoning") as progress:
        failed = reason_generic_ahead(vocabulary, context, on_progress=progress.update)
    asked = cache.misses
    print(
        f"{len(classes)} classes: {cache.hits} already cached, {asked - len(failed)} reasoned now, {len(failed)} failed"
    )
    if failed:
        print("failed (bare names will be used; run again to retry): " + ", ".join(failed[:20]))
    print(f"cache: {cache.path}")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from openseg_r.errors import ConfigError
    from openseg_r.lmm.upstream import to_generic_file

    cache = _cache_file(args)
    models = cache.models("generic")
    model = args.model
    if model is None:
        if len(models) > 1:
            raise ConfigError(
                "the cache holds reasoning of several models; pick one with --model: " + " ; ".join(models)
            )
        model = models[0] if models else None
    entries = cache.entries("generic", model) if model is not None else []
    if not entries:
        raise ConfigError(f"no generic reasoning in {cache.path}" + (f" for {model}" if model else ""))
    reasoning = {key["subject"]: value for key, value in entries}
    Path(args.out).write_text(json.dumps(to_generic_file(reasoning), indent=4, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(reasoning)} classes of {model_label(model)} to {args.out}")
    return EXIT_OK


def model_label(identity: str) -> str:
    """A cache identity (``model id|generation parameters as JSON``) as a person reads it:
    ``scripted:658da4d8edfa``, or ``openai:qwen (temperature 0.2)``."""
    import json

    model_id, _, params = identity.partition("|")
    try:
        fields = json.loads(params) if params else {}
    except ValueError:
        return identity
    if not isinstance(fields, dict) or not fields:
        return model_id
    return f"{model_id} ({', '.join(f'{k} {v}' for k, v in sorted(fields.items()))})"


def run_import(args: argparse.Namespace) -> int:
    from openseg_r.lmm.upstream import load_generic_file
    from openseg_r.nodes.generic_reasoning import generic_cache_key
    from openseg_r.schemas import ClassReasoning

    lmm = _backend(args)
    cache = _cache_file(args)
    entries = load_generic_file(args.file)
    for name, fields in entries.items():
        value = ClassReasoning.model_validate(fields | {"name": name})
        cache.put("generic", generic_cache_key(lmm, name), value.model_dump())
    print(f"imported {len(entries)} classes into {cache.path} for {model_label(lmm.cache_identity)}")
    return EXIT_OK
