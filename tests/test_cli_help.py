"""Every flag of every command has a help text, and every flag whose value has a default in
ModelOptions, SegmenterConfig, Settings or SafetyLimits shows that default as the model has
it (issue 13: flags without help or shown default). The defaults are compared with the
models, so a help text that hard-codes a value fails once the model's default changes."""

from __future__ import annotations

import argparse

from openseg_r.cli.main import build_parser
from openseg_r.cli.options import RECORDED_DEFAULT, Parser, model_option_values, settings_overrides
from openseg_r.config.options import DEFAULT_CONCURRENCY, ModelOptions, field_default
from openseg_r.config.settings import SelfCheckSettings, Settings
from openseg_r.segmenters.dense_clip.options import DenseCLIPOptions, SegmenterConfig
from openseg_r.tools.safety import SafetyLimits

RECORDED_COMMANDS = {("runs", "replay"), ("runs", "resume")}  # model options default to the run's own
RECORDED_OPTIONS = set(ModelOptions().recorded())  # what a run keeps of its ModelOptions
NOT_FLAGS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the top level and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, NOT_FLAGS)]


def model_fields(parser: argparse.ArgumentParser) -> dict[str, tuple[type, str]]:
    """Flag dest -> (model, field) it sets, found by passing a marker through the same
    functions the commands use to turn flags into ModelOptions and Settings."""
    namespace = argparse.Namespace(**{a.dest: f"<{a.dest}>" for a in flags(parser)})
    namespace.segmenter_option = None  # KEY=VALUE pairs: no single field
    found: dict[str, tuple[type, str]] = {}

    def collect(values: dict, model: type) -> None:
        for field, value in values.items():
            if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
                found[value[1:-1]] = (model, field)

    options = model_option_values(namespace)
    collect(options.pop("segmenter_options") or {}, DenseCLIPOptions)
    collect(options, ModelOptions)
    overrides = settings_overrides(namespace)
    collect(overrides.pop("self_check", None) or {}, SelfCheckSettings)
    collect(overrides, Settings)
    for group in parser._action_groups:  # serve's limits: the [safety] table's fields
        if group.title == "safety":
            for action in group._group_actions:
                name = "allowed_roots" if action.dest == "roots" else action.dest
                for field in (name, f"{name}_s"):
                    if field in SafetyLimits.model_fields:
                        found[action.dest] = (SafetyLimits, field)
    return found


def help_problems(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with the help texts of one command, one line per flag."""
    problems = []
    fields = model_fields(parser)
    for action in flags(parser):
        name = f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        text = action.help or ""
        if not text.strip() or text == argparse.SUPPRESS:
            problems.append(f"{name}: no help text")
            continue
        if action.dest in fields:
            model, field = fields[action.dest]
            default = field_default(model, field)
            if path in RECORDED_COMMANDS and (model is DenseCLIPOptions or field in RECORDED_OPTIONS):
                expected = RECORDED_DEFAULT.strip()
            elif isinstance(action, argparse.BooleanOptionalAction):
                expected = f"(default: --{'' if default else 'no-'}{field.replace('_', '-')})"
            elif isinstance(default, bool):
                if isinstance(action, argparse._StoreTrueAction) and default:
                    problems.append(f"{name}: a switch that turns on {model.__name__}.{field}, which is on already")
                continue
            elif default is None or default == []:
                continue  # the description says what "unset" means
            else:
                expected = f"(default: {default})"
        elif action.dest == "concurrency":
            expected = f"(default: {DEFAULT_CONCURRENCY})"
        elif action.default in (None, False, [], argparse.SUPPRESS):
            continue
        else:
            expected = f"(default: {action.default})"
        if expected not in text:
            problems.append(f"{name}: help {text!r} does not show {expected!r}")
    return problems


def test_every_flag_of_every_command_has_help_with_the_models_default():
    parser = build_parser()
    walked = list(commands(parser))
    names = {" ".join(path) for path, _ in walked}
    assert {"segment", "eval", "eval-merge", "serve mcp", "runs replay", "runs list", "reason generic"} <= names
    assert sum(len(flags(p)) for _, p in walked) > 150  # the walk reaches the subcommands' flags
    problems = [problem for path, sub in walked for problem in help_problems(path, sub)]
    assert problems == []


def test_the_flags_named_in_the_issue_show_their_defaults():
    by_path = dict(commands(build_parser()))

    def help_of(path, flag):
        return next(a.help for a in by_path[path]._actions if flag in a.option_strings)

    segment = ("segment",)
    assert f"(default: {SegmenterConfig().attention})" in help_of(segment, "--attention")
    assert f"(default: {Settings().templates})" in help_of(segment, "--templates")
    assert f"(default: {Settings().score_order})" in help_of(segment, "--score-order")
    assert f"(default: {Settings().class_filter})" in help_of(segment, "--class-filter")
    assert f"(default: {Settings().background_threshold})" in help_of(segment, "--background-threshold")
    assert f"(default: {SegmenterConfig().short_side})" in help_of(segment, "--short-side")
    assert f"(default: {SegmenterConfig().crop})" in help_of(segment, "--crop")
    assert f"(default: {SegmenterConfig().stride})" in help_of(segment, "--stride")
    assert f"(default: {Settings().n_attributes})" in help_of(segment, "--n-attributes")
    assert f"(default: {ModelOptions().segmenter_options.clip_model})" in help_of(segment, "--clip-model")
    assert f"(default: {ModelOptions().segmenter_options.clip_pretrained})" in help_of(segment, "--clip-pretrained")
    assert "(default: 8765)" in help_of(("serve", "mcp"), "--port")
    assert f"(default: {SafetyLimits().max_pixels})" in help_of(("serve", "mcp"), "--max-pixels")
    # replay and resume take the model the run was recorded with, the LMM and its cache included
    for flag in ("--clip-model", "--lmm", "--cache"):
        assert help_of(("runs", "replay"), flag).endswith(RECORDED_DEFAULT.strip())
        assert "(default: user)" not in help_of(("runs", "replay"), flag)


def test_the_check_finds_a_missing_help_a_hard_coded_default_and_a_switch_that_is_already_on():
    parser = Parser(prog="probe")
    parser.add_argument("--crop", type=int, default=None, help="sliding-window size (default: 999)")
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--port", type=int, default=8765, help="HTTP port")
    parser.add_argument(
        "--slide", action=argparse.BooleanOptionalAction, default=None, help="sliding windows (default: --no-slide)"
    )
    problems = help_problems(("probe",), parser)
    assert [p.split(":")[0] for p in problems] == [
        "probe --crop",
        "probe --stride",
        "probe --port",
        "probe --slide/--no-slide",
    ]
    assert f"(default: {SegmenterConfig().crop})" in problems[0] and "no help text" in problems[1]

    switch = Parser(prog="probe")
    switch.add_argument("--slide", action="store_true", default=None, help="sliding windows")
    assert help_problems(("probe",), switch) == [
        "probe --slide: a switch that turns on DenseCLIPOptions.slide, which is on already"
    ]
