"""``openseg-r segment`` (one image) and ``openseg-r vocabularies``."""

from __future__ import annotations

import argparse
import sys

from openseg_r.cli.options import (
    EXIT_OK,
    add_lmm_options,
    add_model_options,
    add_protocol_option,
    add_recording_options,
    add_segmenter_options,
    add_self_check_options,
    add_settings_options,
    options_and_settings,
)


def add_parsers(commands) -> None:
    seg = commands.add_parser("segment", help="segment one image")
    seg.add_argument("image", help="path of the image file")
    which = seg.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help='comma-separated classes, "|" between synonyms: "cat, sofa|couch"')
    which.add_argument("--vocab", help="a built-in vocabulary name (see `openseg-r vocabularies`) or a text file")
    seg.add_argument("--out", required=True, help="output folder for labels.png, overlay.png, result.json")
    add_model_options(seg)
    add_lmm_options(seg)
    add_settings_options(seg)
    add_segmenter_options(seg)
    add_protocol_option(seg, default="none")
    add_self_check_options(seg)
    add_recording_options(seg)
    seg.set_defaults(handler=run_segment)

    vocabularies = commands.add_parser("vocabularies", help="list the built-in vocabularies")
    vocabularies.set_defaults(handler=run_vocabularies)


def run_vocabularies(args: argparse.Namespace) -> int:
    from openseg_r.vocab import builtin_names, load_builtin

    for name in builtin_names():
        print(f"{name:16s} {len(load_builtin(name).classes):4d} classes")
    return EXIT_OK


def run_segment(args: argparse.Namespace) -> int:
    from openseg_r.errors import ConfigError
    from openseg_r.images import load_image
    from openseg_r.lmm.spec import configured_spec, names_an_lmm
    from openseg_r.presets import NONE, protocol_for
    from openseg_r.state import Settings
    from openseg_r.vocab import load_named_vocabulary, parse_class_list

    # Cheap checks first, so bad input fails before any model loads; the image is decoded once.
    vocabulary = parse_class_list(args.classes) if args.classes is not None else load_named_vocabulary(args.vocab)
    protocol = protocol_for(args.protocol or NONE)
    spec = configured_spec(args.lmm)
    has_lmm = names_an_lmm(spec)
    reasoning = not args.no_reasoning and has_lmm
    options, settings = options_and_settings(args, protocol, Settings(reasoning=reasoning),
                                             runs_db=_runs_db(args), redact=args.redact)
    rgb = load_image(args.image, max_pixels=options.max_pixels)
    if not args.no_reasoning and not reasoning:
        print("note: no LMM given (--lmm); running the bare-name baseline without reasoning", file=sys.stderr)
    check = settings.self_check
    asks_lmm = check.enabled and check.mode == "lmm"
    if asks_lmm and not has_lmm:
        raise ConfigError("--self-check needs an LMM (--lmm SPEC), or --self-check-mode human to answer yourself")
    uses_lmm = reasoning or asks_lmm
    options = options.model_copy(update={"lmm": spec if uses_lmm else "none",
                                         "lmm_record": options.lmm_record if uses_lmm else None})
    if options.clip_pretrained is None and not options.clip_model.startswith(("hf-hub:", "local-dir:")):
        print("note: random CLIP weights (--clip-pretrained none): the segmentation is meaningless", file=sys.stderr)
    from openseg_r.facade import OpenSegR  # imports torch: only once the input has been checked

    model = OpenSegR.from_options(options, settings=settings)
    human = check.enabled and check.mode == "human"
    on_question = _ask_at_terminal(args.out) if human else None
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
        result = model.segment(rgb, vocabulary, image_name=args.image, on_question=on_question,
                               on_event=(lambda event: [h(event) for h in handlers]) if handlers else None)
    finally:
        if step_log is not None:
            step_log.close()
    from openseg_r.cli.summary import print_result_summary

    print_result_summary(result, args.out)
    return EXIT_OK


def _runs_db(args: argparse.Namespace) -> str | None:
    """--runs-db PATH, or --record (or --redact) for the default database, else no recording."""
    if args.runs_db:
        return args.runs_db
    if args.record or args.redact:
        from openseg_r.runs.database import default_runs_path

        return str(default_runs_path())
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
