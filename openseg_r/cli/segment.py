"""``openseg-r segment`` (one image, or many) and ``openseg-r vocabularies``.

One image file writes its results straight into ``--out``. Several images (several
arguments, a folder or a glob; see :mod:`openseg_r.runs.inputs`) write one folder per image
under ``--out`` and ``--out/index.jsonl``, one line per image as it finishes; exit code
:data:`EXIT_SOME_FAILED` says that at least one image failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openseg_r.cli.options import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_engine_options,
    add_lmm_options,
    add_model_options,
    add_protocol_option,
    add_recording_options,
    add_segmenter_options,
    add_self_check_options,
    add_settings_options,
    add_throughput_options,
    concurrency_option,
    engine_values,
    options_and_settings,
    runs_db_option,
)
from openseg_r.runs.folder import plan_folder, run_record, same_run_or_refuse, segment_folder


def add_parsers(commands) -> None:
    seg = commands.add_parser("segment", help="segment one image, or many (files, folders, globs)")
    seg.add_argument(
        "image",
        nargs="+",
        help="an image file; or several, or folders (their .jpg .jpeg .png .bmp .webp .tif .tiff .gif files, any "
        "case, recursively, sorted; hidden names skipped), or quoted glob patterns (** crosses folders). One "
        "file writes into --out; anything more writes one folder per image plus --out/index.jsonl",
    )
    which = seg.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help='comma-separated classes, "|" between synonyms: "cat, sofa|couch"')
    which.add_argument("--vocab", help="a built-in vocabulary name (see `openseg-r vocabularies`) or a text file")
    seg.add_argument(
        "--out",
        required=True,
        help="output folder for labels.png, overlay.png, result.json (many images: one folder each, "
        "named after the image's path, a/b/cat.jpg -> a__b__cat, and index.jsonl)",
    )
    seg.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="many images: continue --out, skipping images its index.jsonl lists as done "
        "(without it, an --out with an index.jsonl is refused)",
    )
    seg.add_argument(
        "--instances",
        action="store_true",
        default=None,
        help="also write instances.json (the COCO results format: each object found with its class, phrase, score, "
        "box and RLE mask) and outline each instance on overlay.png; for segmenters that find instances (sam3)",
    )
    seg.add_argument(
        "--panoptic",
        action="store_true",
        default=None,
        help="also write panoptic.png and panoptic.json (the COCO panoptic format: things as objects, stuff as "
        "regions) and show each segment on overlay.png; with any segmenter",
    )
    seg.add_argument(
        "--min-segment-area",
        type=int,
        default=None,
        metavar="PIXELS",
        help="--panoptic: smaller segments are dropped, their pixels void (default: 64)",
    )
    add_model_options(seg)
    add_lmm_options(seg, allow_fallback=True)
    add_settings_options(seg)
    add_segmenter_options(seg)
    add_protocol_option(seg, default="none")
    add_self_check_options(seg)
    add_recording_options(seg)
    add_throughput_options(seg)
    add_engine_options(seg)
    seg.set_defaults(handler=run_segment)

    vocabularies = commands.add_parser("vocabularies", help="list the built-in vocabularies")
    vocabularies.set_defaults(handler=run_vocabularies)


def run_vocabularies(args: argparse.Namespace) -> int:
    from openseg_r.vocab import builtin_names, load_builtin

    for name in builtin_names():
        print(f"{name:16s} {len(load_builtin(name).classes):4d} classes")
    return EXIT_OK


def run_segment(args: argparse.Namespace) -> int:
    from openseg_r._support.images import load_image
    from openseg_r.config.presets import NONE, protocol_for
    from openseg_r.config.settings import Settings
    from openseg_r.errors import ConfigError
    from openseg_r.lmm.spec import configured_spec, names_an_lmm
    from openseg_r.runs.inputs import expand_inputs
    from openseg_r.vocab import load_named_vocabulary, parse_class_list

    # Cheap checks first, so bad input fails before any model loads; the image is decoded once.
    vocabulary = parse_class_list(args.classes) if args.classes is not None else load_named_vocabulary(args.vocab)
    protocol = protocol_for(args.protocol or NONE)
    spec = configured_spec(args.lmm)
    has_lmm = names_an_lmm(spec)
    reasoning = not args.no_reasoning and has_lmm
    options, settings = options_and_settings(
        args, protocol, Settings(reasoning=reasoning), runs_db=runs_db_option(args), redact=args.redact
    )
    concurrency = concurrency_option(args)
    engine = engine_values(args)
    outputs = requested_outputs(args)
    if args.instances and not options.kind.instances:
        raise ConfigError(
            f"--instances needs a segmenter that finds instances (sam3); the {options.segmenter} segmenter gives a "
            "label map only"
        )
    inputs = expand_inputs(args.image, exclude=args.out)
    if args.out:
        from openseg_r._support.files import check_output_folder

        check_output_folder(args.out)
    plan = None
    if engine and not inputs.many:
        raise ConfigError(
            "--engine ray segments many images (a folder, a glob or several files); one image runs here, without it"
        )
    if inputs.many:
        plan = plan_folder(args.out, inputs, settings, resume=args.resume, trace_jsonl=args.trace_jsonl)
    else:
        if args.resume:
            raise ConfigError(
                "--resume continues --out on several images (a folder, a glob or several files); "
                "with one image file, run it again"
            )
        rgb = load_image(inputs.images[0], max_pixels=options.max_pixels)
    if not args.no_reasoning and not reasoning:
        print("note: no LMM given (--lmm); running the bare-name baseline without reasoning", file=sys.stderr)
    check = settings.self_check
    asks_lmm = check.enabled and check.mode == "lmm"
    if asks_lmm and not has_lmm:
        raise ConfigError("--self-check needs an LMM (--lmm SPEC), or --self-check-mode human to answer yourself")
    uses_lmm = reasoning or asks_lmm
    options = options.model_copy(
        update={"lmm": spec if uses_lmm else "none", "lmm_record": options.lmm_record if uses_lmm else None}
    )
    if getattr(options.segmenter_options, "random_weights", False):
        print("note: random CLIP weights (--clip-pretrained none): the segmentation is meaningless", file=sys.stderr)
    if plan is not None:
        same_run_or_refuse(plan.out, run_record(vocabulary, settings, options, outputs), args.resume)
    if plan is not None and not plan.todo:
        print(f"nothing to do: all {len(plan.done)} image(s) are already done in {plan.out} (--resume)")
        return EXIT_OK
    if engine:
        from openseg_r.distributed.folder import segment_folder_on_ray

        failed = segment_folder_on_ray(plan, vocabulary, options, settings, concurrency, engine, outputs)
        return EXIT_SOME_FAILED if failed else EXIT_OK
    from openseg_r.model import OpenSegR  # imports torch: only once the input has been checked

    model = OpenSegR.from_options(options, settings=settings)
    show_progress = bool(args.progress or sys.stderr.isatty())
    if plan is not None:
        failed = segment_folder(model, plan, vocabulary, concurrency, show_progress, outputs)
        return EXIT_SOME_FAILED if failed else EXIT_OK
    _segment_one(model, rgb, vocabulary, inputs.images[0], args, show_progress, outputs)
    return EXIT_OK


def requested_outputs(args: argparse.Namespace) -> dict:
    """The files beyond labels, overlay and result each image's folder gets: instances.json
    (``instances``), panoptic.png and panoptic.json (``panoptic``: the smallest segment's area)."""
    from openseg_r.errors import ConfigError
    from openseg_r.panoptic.build import DEFAULT_MIN_AREA

    area = args.min_segment_area
    if area is not None and not args.panoptic:
        raise ConfigError("--min-segment-area is for --panoptic output; give --panoptic too")
    if area is not None and area < 1:
        raise ConfigError(f"--min-segment-area must be at least 1 pixel, not {area}")
    return {"instances": bool(args.instances), "panoptic": (area or DEFAULT_MIN_AREA) if args.panoptic else None}


def _segment_one(
    model, rgb, vocabulary, image_name: str, args: argparse.Namespace, show_progress: bool, outputs: dict
) -> None:
    """One image: its progress, its step log and the human self-check at the terminal."""
    check = model.settings.self_check
    human = check.enabled and check.mode == "human"
    on_question = _ask_at_terminal(args.out) if human else None
    handlers = []
    if show_progress:
        from openseg_r.runs.events import TerminalProgress

        handlers.append(TerminalProgress())
    step_log = None
    if args.trace_jsonl:
        from openseg_r.runs.events import JSONLStepLog

        step_log = JSONLStepLog(args.trace_jsonl)
        handlers.append(step_log)
    try:
        result = model.segment(
            rgb,
            vocabulary,
            image_name=image_name,
            on_question=on_question,
            output=args.out,
            on_event=(lambda event: [h(event) for h in handlers]) if handlers else None,
        )
    finally:
        if step_log is not None:
            step_log.close()
    from openseg_r.cli.summary import print_result_summary

    print_result_summary(result, args.out, outputs)


# --------------------------------------------------------------------------- helpers


def _ask_at_terminal(out_dir: str):
    """Human-mode self-check at the terminal: show where the crop is, read a choice from stdin."""

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
