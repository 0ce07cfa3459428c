"""The ``openseg-r`` command line.

Exit codes: 0 success; 2 bad usage or bad input (one-line message); 1 internal
error (one line; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
COMMANDS = {
    "reason": ("openseg_r.reason_cli", "run_reason"),
    "runs": ("openseg_r.runs_cli", "run_runs"),
    "graph": ("openseg_r.runs_cli", "run_graph"),
    "eval": ("openseg_r.eval_cli", "run_eval_command"),
    "eval-merge": ("openseg_r.eval_cli", "run_merge_command"),
    "serve": ("openseg_r.serve_cli", "run_serve"),
}
MAX_FALLBACK_LINES = 5


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad-usage path
        self.exit(EXIT_USAGE, f"openseg-r: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from openseg_r import __version__

    parser = _Parser(prog="openseg-r", description="Open-vocabulary segmentation guided by LMM reasoning.")
    parser.add_argument("--version", action="version", version=f"openseg-r {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="{segment,vocabularies,reason,runs,graph,eval,eval-merge,serve}")

    seg = commands.add_parser("segment", help="segment one image")
    seg.add_argument("image", help="path of the image file")
    which = seg.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help='comma-separated classes, "|" between synonyms: "cat, sofa|couch"')
    which.add_argument("--vocab", help="a built-in vocabulary name (see `openseg-r vocabularies`) or a text file")
    seg.add_argument("--out", required=True, help="output folder for labels.png, overlay.png, result.json")
    _model_options(seg)
    _lmm_options(seg)
    seg.add_argument("--no-reasoning", action="store_true", help="baseline: bare class names, no LMM")
    seg.add_argument("--image-reasoning", choices=("single", "chain"), default="single",
                     help="one structured LMM call per image, or the paper's three-call chain")
    seg.add_argument("--align-model", default="clip",
                     help="embeddings for the class aligner: clip, minilm, or a sentence-transformers model")
    seg.add_argument("--templates", choices=("vild", "imagenet"), default="vild")
    seg.add_argument("--n-attributes", type=int, default=3)
    seg.add_argument("--score-order", choices=("max_then_softmax", "softmax_then_max"), default="max_then_softmax")
    seg.add_argument("--class-filter", choices=("hard", "soft", "none"), default="hard")
    seg.add_argument("--background-threshold", type=float, default=0.1)
    seg.add_argument("--short-side", type=int, default=336)
    seg.add_argument("--crop", type=int, default=224)
    seg.add_argument("--stride", type=int, default=112)
    seg.add_argument("--no-slide", action="store_true", help="run the whole resized image at once")
    seg.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default 40,000,000)")
    _self_check_options(seg)
    record = seg.add_argument_group("recording", "keep the run to inspect, replay or report later (openseg-r runs)")
    record.add_argument("--record", action="store_true", help="record the run in the runs database")
    record.add_argument("--runs-db", default=None, help="the runs database (implies --record; default: user data dir)")
    record.add_argument("--redact", action="store_true", help="keep images out of the runs database (hashes only)")
    record.add_argument("--trace-jsonl", default=None, help="write the step log (every node's input and output) as JSONL")
    record.add_argument("--progress", action="store_true", help="live progress per node (default when stderr is a terminal)")

    commands.add_parser("vocabularies", help="list the built-in vocabularies")

    reason = commands.add_parser("reason", help="precompute, export or import reasoning")
    actions = reason.add_subparsers(dest="action", required=True, parser_class=_Parser)
    generic = actions.add_parser("generic", help="generic reasoning for a vocabulary into the cache (resumable)")
    which = generic.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes")
    which.add_argument("--vocab")
    _lmm_options(generic)
    export = actions.add_parser("export", help="write cached generic reasoning in the upstream JSON format")
    export.add_argument("--cache", default=None, help="the SQLite reasoning cache (default: the user cache)")
    export.add_argument("--model", default=None, help="which model's reasoning, when the cache holds several")
    export.add_argument("-o", "--out", required=True)
    imported = actions.add_parser("import", help="load an upstream generic-reasoning JSON into the cache")
    imported.add_argument("file")
    _lmm_options(imported)
    from openseg_r.runs_cli import add_graph_parser, add_runs_parser

    add_runs_parser(commands)
    add_graph_parser(commands)
    from openseg_r.eval_cli import add_eval_parsers

    add_eval_parsers(commands)

    serve = commands.add_parser("serve", help="serve openseg-r to agents")
    servers = serve.add_subparsers(dest="server", required=True, parser_class=_Parser)
    mcp = servers.add_parser("mcp", help="an MCP server (stdio by default)")
    mcp.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    mcp.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1: this machine only)")
    mcp.add_argument("--port", type=int, default=8765)
    _model_options(mcp)
    _lmm_options(mcp)
    _safety_options(mcp)
    return parser


def _model_options(parser: argparse.ArgumentParser, defaults_from_run: bool = False) -> None:
    from openseg_r.state import ATTENTION_VARIANTS

    recorded = " (default: as recorded with the run)" if defaults_from_run else ""
    parser.add_argument("--clip-model", default=None if defaults_from_run else "ViT-B-16",
                        help="open_clip model name, hf-hub:ORG/REPO, local-dir:PATH or a config JSON" + recorded)
    parser.add_argument("--clip-pretrained", default=None if defaults_from_run else "openai",
                        help="pretrained tag or weights file; 'none' for random weights" + recorded)
    parser.add_argument("--attention", default=None if defaults_from_run else "naclip", choices=ATTENTION_VARIANTS)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if present)")
    parser.add_argument("--precision", default=None if defaults_from_run else "auto",
                        choices=("auto", "fp32", "fp16", "bf16"))


def _safety_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("safety", "limits on what callers may ask (also the [safety] config table)")
    group.add_argument("--root", action="append", default=None, dest="roots",
                       help="a folder image paths may come from (repeat for several; default: none, base64 only)")
    group.add_argument("--allow-urls", action="store_true", default=None, help="allow public http(s) image URLs")
    group.add_argument("--max-concurrent", type=int, default=None, help="segmentations at once (default 2)")
    group.add_argument("--queue-timeout", type=float, default=None,
                       help="seconds a call may wait for a free slot before it is refused (default 30)")
    group.add_argument("--call-timeout", type=float, default=None, help="seconds per segmentation (default 300)")
    group.add_argument("--max-pixels", type=int, default=None, help="largest decoded image (default 25,000,000)")
    group.add_argument("--safety-config", default=None, help="a TOML file with a [safety] table")


def _self_check_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("self-check", "re-ask the LMM about regions where the segmenter is unsure")
    group.add_argument("--self-check", action="store_true", help="turn the self-check on (off by default)")
    group.add_argument("--self-check-mode", choices=("lmm", "human"), default="lmm",
                       help="who answers: the LMM, or you at this terminal")
    group.add_argument("--self-check-k", type=int, default=3, help="regions asked about per round (default 3)")
    group.add_argument("--self-check-rounds", type=int, default=2, help="at most this many rounds (default 2)")
    group.add_argument("--self-check-max-calls", type=int, default=8,
                       help="hard budget of LMM calls per image, re-asks included (default 8)")
    group.add_argument("--self-check-margin", type=float, default=0.15,
                       help="a pixel is ambiguous when its top-2 probability margin is under this (default 0.15)")
    group.add_argument("--self-check-min-area", type=int, default=64, help="smallest region in pixels (default 64)")
    group.add_argument("--self-check-min-confidence", type=float, default=0.6,
                       help="answers less confident than this change nothing (default 0.6)")
    group.add_argument("--self-check-apply", choices=("relabel", "reweight"), default="relabel",
                       help="a confident choice relabels the region (default) or re-weights its top-2 probabilities")
    group.add_argument("--self-check-none", choices=("keep", "unknown"), default="keep",
                       help='"none of these" keeps the region as segmented (default) or marks it unknown')
    group.add_argument("--self-check-full-image", action="store_true", help="also show the LMM the whole image")


def _self_check_settings(args: argparse.Namespace) -> dict:
    return {
        "enabled": args.self_check,
        "mode": args.self_check_mode,
        "top_k": args.self_check_k,
        "rounds": args.self_check_rounds,
        "max_calls": args.self_check_max_calls,
        "margin_threshold": args.self_check_margin,
        "min_area_pixels": args.self_check_min_area,
        "min_confidence": args.self_check_min_confidence,
        "apply": args.self_check_apply,
        "none_policy": args.self_check_none,
        "full_image": args.self_check_full_image,
    }


def _lmm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lmm", default=None,
                        help="LMM backend spec (default: $OPENSEG_R_LMM, the config file, else none); see README")
    parser.add_argument("--lmm-record", default=None, help="append every LMM call to this JSONL file")
    parser.add_argument("--cache", default=None,
                        help="SQLite reasoning cache file (default: the user cache dir); 'none' keeps it in memory")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "merge"]:  # `openseg-r eval merge DIRS --out DIR`
        argv = ["eval-merge", *argv[2:]]
    args = parser.parse_args(argv)
    # Libraries log to the root logger (open_clip logs a failed download as an ERROR
    # before raising); our own one-line message says the same, so keep them quiet.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.CRITICAL)
    try:
        if args.command == "vocabularies":
            return _vocabularies()
        if args.command == "segment":
            return _segment(args)
        module, function = COMMANDS[args.command]  # imported only when used: --help stays fast
        return getattr(importlib.import_module(module), function)(args)
    except KeyboardInterrupt:
        print("openseg-r: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from openseg_r.errors import OpenSegRError

        if isinstance(exc, OpenSegRError):
            print(f"openseg-r: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.debug:
            traceback.print_exc()
        print(f"openseg-r: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL


def cache_path(value: str | None):
    """--cache: a path, 'none' for memory, or by default the user cache file."""
    from openseg_r.cache import default_cache_path

    if value is None:
        return default_cache_path()
    return None if value == "none" else value


def _vocabularies() -> int:
    from openseg_r.vocab import builtin_names, load_builtin

    for name in builtin_names():
        print(f"{name:16s} {len(load_builtin(name).classes):4d} classes")
    return EXIT_OK


def _segment(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from openseg_r.errors import ConfigError, describe_validation_error
    from openseg_r.images import DEFAULT_MAX_PIXELS, load_image
    from openseg_r.cache import open_cache
    from openseg_r.lmm.spec import backend_from_spec, configured_spec
    from openseg_r.state import Settings
    from openseg_r.vocab import load_named_vocabulary, parse_class_list

    # Cheap checks first, so bad input fails before any model loads.
    vocabulary = parse_class_list(args.classes) if args.classes is not None else load_named_vocabulary(args.vocab)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    load_image(args.image, max_pixels=max_pixels)
    spec = configured_spec(args.lmm)
    has_lmm = spec.strip() not in ("", "none")
    reasoning = not args.no_reasoning and has_lmm
    if not args.no_reasoning and not reasoning:
        print("note: no LMM given (--lmm); running the bare-name baseline without reasoning", file=sys.stderr)
    asks_lmm = args.self_check and args.self_check_mode == "lmm"
    if asks_lmm and not has_lmm:
        raise ConfigError("--self-check needs an LMM (--lmm SPEC), or --self-check-mode human to answer yourself")
    try:
        settings = Settings(
            reasoning=reasoning,
            n_attributes=args.n_attributes,
            templates=args.templates,
            score_order=args.score_order,
            class_filter=args.class_filter,
            background_threshold=args.background_threshold,
            image_reasoning_mode=args.image_reasoning,
            self_check=_self_check_settings(args),
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid setting: {describe_validation_error(exc)}") from None
    uses_lmm = reasoning or asks_lmm
    lmm = backend_from_spec(spec if uses_lmm else "none", record=args.lmm_record if uses_lmm else None)
    cache = open_cache(cache_path(args.cache)) if reasoning else None
    from openseg_r.segment.loading import pretrained_option

    pretrained = pretrained_option(args.clip_pretrained)
    if pretrained is None and not args.clip_model.startswith(("hf-hub:", "local-dir:")):
        print("note: random CLIP weights (--clip-pretrained none): the segmentation is meaningless", file=sys.stderr)
    from openseg_r.facade import OpenSegR  # imports torch: only once the input has been checked

    model = OpenSegR(
        args.clip_model,
        pretrained,
        lmm=lmm,
        reasoning_cache=cache,
        aligner=args.align_model,
        settings=settings,
        device=args.device,
        precision=args.precision,
        max_pixels=max_pixels,
        runs_db=_runs_db(args),
        redact=args.redact,
        attention=args.attention,
        short_side=args.short_side,
        crop=args.crop,
        stride=args.stride,
        slide=not args.no_slide,
    )
    on_question = _ask_at_terminal(args.out) if args.self_check and args.self_check_mode == "human" else None
    handlers = []
    if args.progress or sys.stderr.isatty():
        from openseg_r.runs.events import TerminalProgress

        handlers.append(TerminalProgress())
    step_log = None
    if args.trace_jsonl:
        from openseg_r.runs.events import JSONLStepLog

        step_log = JSONLStepLog(args.trace_jsonl)
        handlers.append(step_log)
    try:
        result = model.segment(args.image, vocabulary, on_question=on_question,
                               on_event=(lambda event: [h(event) for h in handlers]) if handlers else None)
    finally:
        if step_log is not None:
            step_log.close()
    print_result_summary(result, args.out)
    return EXIT_OK


def print_result_summary(result, out_dir: str | None) -> None:
    """Classes found, fallbacks, the self-check, the run id, and the files written."""
    paths = result.save(out_dir) if out_dir else None
    for summary in sorted(result.classes, key=lambda c: -c.pixels):
        if summary.pixels:
            print(f"{summary.name:24s} {100 * summary.area_fraction:6.2f}%  confidence {summary.mean_confidence:.3f}")
    fallbacks = result.state.fallbacks
    for fallback in fallbacks[:MAX_FALLBACK_LINES]:
        subject = f" [{fallback.subject}]" if fallback.subject else ""
        print(f"fallback in {fallback.step}{subject}: {fallback.reason} -> {fallback.used}", file=sys.stderr)
    if len(fallbacks) > MAX_FALLBACK_LINES:
        print(f"... and {len(fallbacks) - MAX_FALLBACK_LINES} more fallbacks, listed in result.json", file=sys.stderr)
    check = result.state.self_check
    if check is not None:
        changed = sum(c.pixels_changed for c in check.changes)
        asked = sum(len(r.regions) for r in check.rounds)
        print(f"self-check: {asked} region(s) asked in {check.round} round(s), {check.calls_used} LMM call(s), "
              f"{changed} pixel(s) changed; stopped: {check.stopped}")
    if result.run_id:
        print(f"run id: {result.run_id} (openseg-r runs show {result.run_id[:12]})")
    if paths:
        print(f"wrote {paths['labels']}, {paths['overlay']}, {paths['result']}")


def _runs_db(args):
    """--runs-db PATH, or --record for the default database, else no recording."""
    if args.runs_db:
        return args.runs_db
    if args.record or args.redact:
        from openseg_r.runs.database import default_runs_path

        return default_runs_path()
    return None


def _ask_at_terminal(out_dir: str):
    """Human-mode self-check at the terminal: show where the crop is, read a choice from stdin."""
    from pathlib import Path

    from PIL import Image

    folder = Path(out_dir) / "self_check"

    def on_question(question: dict, crop) -> object:
        folder.mkdir(parents=True, exist_ok=True)
        crop_path = folder / f"question-{question['region_id']}.png"
        Image.fromarray(crop).save(crop_path)
        choices = question["choices"]
        print(f"\nregion {question['region_id']} (box {question['box']}), outlined in {crop_path}", file=sys.stderr)
        for number, choice in enumerate(choices, start=1):
            print(f"  {number}. {choice}", file=sys.stderr)
        print("your choice (number or name; empty to skip): ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline().strip()
        if not line:
            return {"choice": "none of these", "confidence": 0.0, "reason": "skipped at the terminal"}
        if line.isdigit() and 1 <= int(line) <= len(choices):
            line = choices[int(line) - 1]
        return {"choice": line, "confidence": 1.0, "reason": "answered at the terminal"}

    return on_question


if __name__ == "__main__":
    sys.exit(main())
