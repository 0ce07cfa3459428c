"""What the commands share: the parser class, exit codes, option groups, and the one
way their values become :class:`ModelOptions` and :class:`Settings`.

Every option defaults to None, meaning "not given": the defaults live in
:class:`~openseg_r.config.options.ModelOptions`, each segmenter kind's options model
and :class:`~openseg_r.config.settings.Settings`, and help texts read them from there. Only
pydantic and the standard library are imported here, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import typing

from pydantic import BaseModel

from openseg_r.config.options import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CPUS_PER_ACTOR,
    ModelOptions,
    checked_cpus_per_actor,
    field_default,
)
from openseg_r.config.settings import LMMOptions, SelfCheckSettings, Settings, merged_settings
from openseg_r.segmenters.dense_clip.options import DenseCLIPOptions, SegmenterConfig
from openseg_r.segmenters.registry import option_pairs

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_SOME_FAILED = 3  # segment on many images: at least one image failed (listed in index.jsonl)
# Reasoning was asked for but got nothing at all (the LMM unreachable, its key refused, every
# answer unusable), or `lmm check` found the backend unusable; --allow-fallback keeps bare names.
EXIT_NO_REASONING = 4


class Parser(argparse.ArgumentParser):
    """Bad usage is one line and exit 2, like every other bad-input path. A misspelt flag is
    named first: argparse would otherwise report a required option the typo was meant to be
    (``--vocabb voc21``: "one of the arguments --classes --vocab is required")."""

    arguments: list[str] = []  # the command line being parsed (set by cli.main)

    def error(self, message: str):
        unknown = self.unknown_flags()
        if unknown and not message.startswith("unrecognized arguments"):
            message = f"unrecognized arguments: {' '.join(unknown)}{self._suggestion(unknown[0])}"
        self.exit(EXIT_USAGE, f"openseg-r: error: {message}\n")

    def unknown_flags(self) -> list[str]:
        """The ``--flags`` of the command line that this (sub)parser does not know."""
        if self._subparsers is not None:  # the top-level parser: its subcommands judge their own flags
            return []
        known = set(self._option_string_actions)
        return [
            arg.split("=", 1)[0]
            for arg in Parser.arguments
            if arg.startswith("--") and arg != "--" and arg.split("=", 1)[0] not in known
        ]

    def _suggestion(self, flag: str) -> str:
        import difflib

        close = difflib.get_close_matches(flag, [o for o in self._option_string_actions if o.startswith("--")], n=1)
        return f" (did you mean {close[0]}?)" if close else ""


def described(model: type[BaseModel], name: str, text: str | None = None) -> str:
    """A help text: ``text`` (else the field's description) and the model's default, read
    from the model so that it cannot drift (tests/test_cli_help.py checks every flag)."""
    field = model.model_fields[name]
    default = field_default(model, name)
    if default is None or isinstance(default, bool):  # the description says what None or a switch means
        return text or field.description or ""
    return f"{text or field.description or ''} (default: {default})"


RECORDED_DEFAULT = " (default: as recorded with the run)"


def described_or_recorded(
    model: type[BaseModel], name: str, text: str | None = None, defaults_from_run: bool = False
) -> str:
    """:func:`described`, or for ``runs replay/resume`` the run's recorded value as the default."""
    if defaults_from_run:
        return (text or model.model_fields[name].description or "") + RECORDED_DEFAULT
    return described(model, name, text)


def choices_of(model: type[BaseModel], name: str) -> tuple:
    """A Literal field's values, for argparse ``choices``."""
    annotation = model.model_fields[name].annotation
    return typing.get_args(annotation)


# --------------------------------------------------------------------------- option groups


def add_model_options(parser: argparse.ArgumentParser, defaults_from_run: bool = False) -> None:
    """Which segmenter (and, for dense CLIP, which model, weights and last block), device and precision."""

    def text(model, name, words=None):
        return described_or_recorded(model, name, words, defaults_from_run)

    parser.add_argument("--segmenter", default=None, metavar="KIND", help=text(ModelOptions, "segmenter"))
    parser.add_argument(
        "--segmenter-option",
        action="append",
        default=None,
        dest="segmenter_option",
        metavar="KEY=VALUE",
        help=text(ModelOptions, "segmenter_options"),
    )
    parser.add_argument(
        "--clip-model",
        default=None,
        help=text(
            DenseCLIPOptions, "clip_model", "dense-clip: " + DenseCLIPOptions.model_fields["clip_model"].description
        ),
    )
    parser.add_argument(
        "--clip-pretrained",
        default=None,
        help=text(
            DenseCLIPOptions,
            "clip_pretrained",
            "dense-clip: " + DenseCLIPOptions.model_fields["clip_pretrained"].description,
        ),
    )
    parser.add_argument(
        "--attention",
        default=None,
        choices=choices_of(SegmenterConfig, "attention"),
        help=text(SegmenterConfig, "attention"),
    )
    parser.add_argument("--device", default=None, help=text(ModelOptions, "device"))
    parser.add_argument(
        "--precision", default=None, choices=choices_of(ModelOptions, "precision"), help=text(ModelOptions, "precision")
    )


def add_lmm_options(
    parser: argparse.ArgumentParser, defaults_from_run: bool = False, allow_fallback: bool = False
) -> None:
    parser.add_argument(
        "--lmm",
        default=None,
        help=described_or_recorded(
            ModelOptions, "lmm", ModelOptions.model_fields["lmm"].description + "; see README", defaults_from_run
        ),
    )
    add_lmm_option_flag(parser, defaults_from_run)
    parser.add_argument("--lmm-record", default=None, help=described(ModelOptions, "lmm_record"))
    parser.add_argument(
        "--cache", default=None, help=described_or_recorded(ModelOptions, "reasoning_cache", None, defaults_from_run)
    )
    if allow_fallback:
        parser.add_argument(
            "--allow-fallback",
            action="store_true",
            default=None,
            help="when the LMM gives no reasoning at all (server unreachable, every answer "
            f"unusable), keep the bare-name result and exit 0 (default: exit {EXIT_NO_REASONING})",
        )


def add_lmm_option_flag(parser: argparse.ArgumentParser, defaults_from_run: bool = False) -> None:
    parser.add_argument(
        "--lmm-option",
        action="append",
        default=None,
        dest="lmm_option",
        metavar="KEY=VALUE",
        help=described_or_recorded(
            ModelOptions,
            "lmm_options",
            f"how the LMM is called, repeatable: {LMMOptions.keys()} (over the config file's [lmm] table; see README)",
            defaults_from_run,
        ),
    )


def add_settings_options(parser: argparse.ArgumentParser, baseline_flag: bool = True) -> None:
    """The per-run settings ``segment`` takes (fields of :class:`Settings`); a server whose
    callers choose reasoning per request has no ``--no-reasoning``."""
    if baseline_flag:
        parser.add_argument(
            "--no-reasoning", action="store_true", default=None, help="baseline: bare class names, no LMM"
        )
    parser.add_argument(
        "--image-reasoning",
        default=None,
        choices=choices_of(Settings, "image_reasoning_mode"),
        help=described(
            Settings, "image_reasoning_mode", "one structured LMM call per image, or the paper's three-call chain"
        ),
    )
    parser.add_argument("--align-model", default=None, help=described(ModelOptions, "aligner"))
    add_scoring_options(parser)


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """How pixels are scored against the prompts (fields of :class:`Settings`)."""
    parser.add_argument(
        "--templates",
        default=None,
        choices=choices_of(Settings, "templates"),
        help=described(Settings, "templates", "CLIP prompt templates"),
    )
    parser.add_argument(
        "--n-attributes", type=int, default=None, help=described(Settings, "n_attributes", "attribute slots per class")
    )
    parser.add_argument(
        "--score-order",
        default=None,
        choices=choices_of(Settings, "score_order"),
        help=described(Settings, "score_order", "max over synonyms before or after the softmax"),
    )
    parser.add_argument(
        "--class-filter",
        default=None,
        choices=choices_of(Settings, "class_filter"),
        help=described(Settings, "class_filter", "what happens to classes image reasoning did not find"),
    )
    parser.add_argument(
        "--background-threshold",
        type=float,
        default=None,
        help=described(
            Settings, "background_threshold", "pixels less sure than this become background (vocabularies with one)"
        ),
    )


def add_segmenter_options(parser: argparse.ArgumentParser, with_max_pixels: bool = True) -> None:
    """Dense-CLIP inference settings (fields of :class:`SegmenterConfig`)."""
    parser.add_argument("--short-side", type=int, default=None, help=described(SegmenterConfig, "short_side"))
    parser.add_argument("--crop", type=int, default=None, help=described(SegmenterConfig, "crop"))
    parser.add_argument("--stride", type=int, default=None, help=described(SegmenterConfig, "stride"))
    slide = "--slide" if field_default(SegmenterConfig, "slide") else "--no-slide"
    parser.add_argument(
        "--slide",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"sliding windows, or (--no-slide) the whole resized image at once (default: {slide})",
    )
    parser.add_argument("--pamr-steps", type=int, default=None, help=described(SegmenterConfig, "pamr_steps"))
    if with_max_pixels:
        parser.add_argument("--max-pixels", type=int, default=None, help=described(ModelOptions, "max_pixels"))


def add_throughput_options(parser: argparse.ArgumentParser, concurrency: bool = True) -> None:
    """How many images are in flight, how they share forward passes, and the text cache."""
    group = parser.add_argument_group("throughput", "many images fast (see README, Throughput)")
    if concurrency:
        group.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help=f"images in flight at once: their LMM calls overlap (default: {DEFAULT_CONCURRENCY})",
        )
    group.add_argument("--batch-size", type=int, default=None, help=described(ModelOptions, "batch_size"))
    group.add_argument("--batch-wait-ms", type=float, default=None, help=described(ModelOptions, "batch_wait_ms"))
    group.add_argument("--lmm-concurrency", type=int, default=None, help=described(ModelOptions, "lmm_concurrency"))
    group.add_argument("--text-cache", default=None, help=described(ModelOptions, "text_cache"))
    group.add_argument("--compile", action="store_true", default=None, help=described(SegmenterConfig, "compile"))


ENGINES = ("local", "ray")
DEFAULT_ACTORS = 2


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Where the images run: this process (local) or a Ray cluster's actor pool (README,
    Running on a cluster)."""
    group = parser.add_argument_group("engine", "run on a Ray cluster (pip install 'openseg-r[ray]')")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; ray: a Ray actor pool, each actor builds the model once (default: local)",
    )
    group.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the cluster, 'auto' (this machine's, after `ray start`) or "
        "ray://HOST:10001 (default: start a local Ray cluster)",
    )
    group.add_argument(
        "--actors",
        type=int,
        default=None,
        help=f"with --engine ray: actors (model copies) running at once (default: {DEFAULT_ACTORS})",
    )
    group.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="with --engine ray: GPUs each actor reserves, e.g. 1 or 0.5 (default: 0)",
    )
    group.add_argument(
        "--cpus-per-actor",
        type=float,
        default=None,
        help="with --engine ray: CPUs each actor reserves; torch runs that many threads in it "
        "(whole CPUs, at least 1; the labels do not depend on it) "
        f"(default: {DEFAULT_CPUS_PER_ACTOR:g})",
    )


def engine_values(args: argparse.Namespace) -> dict:
    """The Ray engine's options the flags give; an engine flag without --engine ray is a usage error."""
    from openseg_r.errors import ConfigError

    given = [
        flag
        for flag, dest in (
            ("--address", "address"),
            ("--actors", "actors"),
            ("--gpus-per-actor", "gpus_per_actor"),
            ("--cpus-per-actor", "cpus_per_actor"),
        )
        if getattr(args, dest, None) is not None
    ]
    if args.engine != "ray":
        if given:
            raise ConfigError(f"{', '.join(given)} need --engine ray")
        return {}
    return {
        "address": args.address,
        "actors": DEFAULT_ACTORS if args.actors is None else args.actors,
        "gpus_per_actor": args.gpus_per_actor or 0.0,
        "cpus_per_actor": DEFAULT_CPUS_PER_ACTOR
        if args.cpus_per_actor is None
        else checked_cpus_per_actor(args.cpus_per_actor),
    }


def concurrency_option(args: argparse.Namespace) -> int:
    """--concurrency, checked: a positive number of images in flight."""
    from openseg_r.nodes.stages import checked_concurrency

    value = getattr(args, "concurrency", None)
    return checked_concurrency(DEFAULT_CONCURRENCY if value is None else value, "--concurrency")


def add_protocol_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--protocol",
        default=None,
        help="the settings behind a published table: a benchmark name (voc21, pc60, ade150, ...; "
        "see openseg_r.config.presets), auto (the dataset's, for eval) or none; single "
        f"options given here override single fields (default: {default})",
    )


SELF_CHECK_FLAGS = {  # flag dest -> SelfCheckSettings field, with a help text
    "self_check_mode": ("mode", "who answers: the LMM, or you at this terminal"),
    "self_check_k": ("top_k", "regions asked about per round"),
    "self_check_rounds": ("rounds", "at most this many rounds"),
    "self_check_max_calls": ("max_calls", "hard budget of LMM calls per image, re-asks included"),
    "self_check_margin": ("margin_threshold", "a pixel is ambiguous when its top-2 probability margin is under this"),
    "self_check_min_area": ("min_area_pixels", "smallest region in pixels"),
    "self_check_min_confidence": ("min_confidence", "answers less confident than this change nothing"),
    "self_check_apply": ("apply", "a confident choice relabels the region or re-weights its top-2 probabilities"),
    "self_check_none": ("none_policy", '"none of these" keeps the region as segmented or marks it unknown'),
}


def add_self_check_options(parser: argparse.ArgumentParser, toggles: bool = True) -> None:
    """The self-check's settings; without ``toggles`` (a page picks on/off and who answers), only its thresholds."""
    group = parser.add_argument_group("self-check", "re-ask the LMM about regions where the segmenter is unsure")
    if toggles:
        group.add_argument(
            "--self-check", action="store_true", default=None, help="turn the self-check on (off by default)"
        )
    for dest, (field, text) in SELF_CHECK_FLAGS.items():
        if not toggles and dest == "self_check_mode":
            continue
        flag = "--" + dest.replace("_", "-")
        annotation = SelfCheckSettings.model_fields[field].annotation
        if typing.get_args(annotation):
            group.add_argument(
                flag, default=None, choices=typing.get_args(annotation), help=described(SelfCheckSettings, field, text)
            )
        else:
            group.add_argument(flag, type=annotation, default=None, help=described(SelfCheckSettings, field, text))
    group.add_argument(
        "--self-check-full-image", action="store_true", default=None, help="also show the LMM the whole image"
    )


def add_recording_options(parser: argparse.ArgumentParser, step_log: bool = True) -> None:
    """Recording to the runs database; with ``step_log``, also the JSONL step log and terminal progress."""
    record = parser.add_argument_group("recording", "keep the run to inspect, replay or report later (openseg-r runs)")
    record.add_argument("--record", action="store_true", default=None, help="record the run in the runs database")
    record.add_argument("--runs-db", default=None, help="the runs database (implies --record; default: user data dir)")
    record.add_argument(
        "--redact", action="store_true", default=None, help="keep images out of the runs database (hashes only)"
    )
    if not step_log:
        return
    record.add_argument(
        "--trace-jsonl", default=None, help="write the step log (every node's input and output) as JSONL"
    )
    record.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="live progress per node (default when stderr is a terminal)",
    )


def add_safety_options(parser: argparse.ArgumentParser, paths: bool = True) -> None:
    """The safety limits; without ``paths`` (a page uploads its images), no image folders or URLs."""
    from openseg_r.tools.safety import SafetyLimits

    group = parser.add_argument_group("safety", "limits on what callers may ask (also the [safety] config table)")
    if paths:
        group.add_argument(
            "--root",
            action="append",
            default=None,
            dest="roots",
            help="a folder image paths may come from (repeat for several; default: none, base64 only)",
        )
        group.add_argument("--allow-urls", action="store_true", default=None, help="allow public http(s) image URLs")
    group.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help=described(SafetyLimits, "max_concurrent", "segmentations at once"),
    )
    group.add_argument(
        "--queue-timeout",
        type=float,
        default=None,
        help=described(SafetyLimits, "queue_timeout_s", "seconds a call may wait for a free slot before it is refused"),
    )
    group.add_argument(
        "--call-timeout",
        type=float,
        default=None,
        help=described(SafetyLimits, "call_timeout_s", "seconds per segmentation"),
    )
    group.add_argument(
        "--max-pixels", type=int, default=None, help=described(SafetyLimits, "max_pixels", "largest decoded image")
    )
    group.add_argument(
        "--max-text-sentences",
        type=int,
        default=None,
        help=described(
            SafetyLimits,
            "max_text_sentences",
            "text sentences a call's vocabulary may cost: distinct names and synonyms x templates",
        ),
    )
    group.add_argument("--safety-config", default=None, help="a TOML file with a [safety] table")


# --------------------------------------------------------------------------- values


def model_options(args: argparse.Namespace, **overrides) -> ModelOptions:
    """The options the flags give; a flag not given (None) takes the model's default."""
    return ModelOptions.build(**(model_option_values(args) | overrides))


def model_option_values(args: argparse.Namespace) -> dict:
    """Flag values by ModelOptions field, None where a flag was not given (or not offered)."""
    flag = lambda name: getattr(args, name, None)  # noqa: E731
    dense_clip_flags = {  # today's flags: options of the dense-clip kind
        "clip_model": flag("clip_model"),
        "clip_pretrained": flag("clip_pretrained"),
        "attention": flag("attention"),
        "short_side": flag("short_side"),
        "crop": flag("crop"),
        "stride": flag("stride"),
        "slide": flag("slide"),
        "pamr_steps": flag("pamr_steps"),
        "compile": flag("compile"),
    }
    segmenter_options = option_pairs(flag("segmenter_option") or []) | {
        k: v for k, v in dense_clip_flags.items() if v is not None
    }
    return {
        "segmenter": flag("segmenter"),
        "segmenter_options": segmenter_options or None,
        "device": flag("device"),
        "precision": flag("precision"),
        "lmm": flag("lmm"),
        "lmm_record": flag("lmm_record"),
        "reasoning_cache": flag("cache"),
        "aligner": flag("align_model"),
        "max_pixels": flag("max_pixels"),
        "text_cache": flag("text_cache"),
        "batch_size": flag("batch_size"),
        "batch_wait_ms": flag("batch_wait_ms"),
        "lmm_concurrency": flag("lmm_concurrency"),
        "lmm_options": flag("lmm_option"),
    }


def runs_db_option(args: argparse.Namespace) -> str | None:
    """--runs-db PATH, or --record (or --redact) for the default database, else no recording."""
    if args.runs_db:
        return args.runs_db
    if args.record or args.redact:
        from openseg_r.runs.database import default_runs_path

        return str(default_runs_path())
    return None


def settings_overrides(args: argparse.Namespace) -> dict:
    """The Settings fields the flags give (merged over the defaults by the one merge rule)."""
    flag = lambda name: getattr(args, name, None)  # noqa: E731
    values = {
        "image_reasoning_mode": flag("image_reasoning"),
        "templates": flag("templates"),
        "n_attributes": flag("n_attributes"),
        "score_order": flag("score_order"),
        "class_filter": flag("class_filter"),
        "background_threshold": flag("background_threshold"),
        "allow_fallback": flag("allow_fallback"),
    }
    self_check = {field: flag(dest) for dest, (field, _) in SELF_CHECK_FLAGS.items()}
    self_check |= {"enabled": flag("self_check"), "full_image": flag("self_check_full_image")}
    values["self_check"] = {k: v for k, v in self_check.items() if v is not None} or None
    return {k: v for k, v in values.items() if v is not None}


def options_and_settings(args: argparse.Namespace, protocol, base: Settings, **overrides) -> tuple:
    """(ModelOptions, Settings) in layers: the models' defaults, then the protocol (a
    :class:`~openseg_r.config.presets.Protocol` or None), then each option given on the command line."""
    values = model_option_values(args) | overrides
    segmenter_options = values.pop("segmenter_options")
    options = ModelOptions.build(**values)
    settings = base
    if protocol is not None:
        options, settings = protocol.apply(options, base)
    options = options.with_overrides(segmenter_options=segmenter_options)
    return options, merged_settings(settings, settings_overrides(args))
