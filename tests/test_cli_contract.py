"""The command-line contract: every command, flag, exit code and one-line error.

``tests/data/cli_contract.json`` is a snapshot of what ``build_parser()`` accepts: for every
command path, each argument's option strings, dest, action kind, nargs, type, choices,
whether it is required and which mutually exclusive group it belongs to. Defaults and help
texts are deliberately left out (defaults come from the settings models; help is prose).
After an intended change to the command line, regenerate the snapshot and review its diff:

    python tests/test_cli_contract.py --regenerate

Everything here runs in-process and loads no model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from cli_calls import call

from openseg_r.runs.database import RunsDB

SNAPSHOT = Path(__file__).resolve().parent / "data" / "cli_contract.json"
PROG = "openseg-r"
UNKNOWN = "--no-such-flag"


# --- the contract, read from the live parser -----------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _kind(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """argparse's own name for the action ("store", "store_true", "append", "version", ...)."""
    names = [name for name, cls in parser._registries["action"].items() if name and cls is type(action)]
    return names[0] if names else f"{type(action).__module__}.{type(action).__qualname__}"


def _key(action: argparse.Action) -> str:
    """An argument's name in the snapshot: its long option (``--out`` for ``-o/--out``), else its dest."""
    if not action.option_strings:
        return action.dest
    return next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])


def _describe(parser: argparse.ArgumentParser, action: argparse.Action, groups: dict) -> dict:
    group = groups.get(id(action))
    exclusive = None
    if group is not None:
        exclusive = {"members": [_key(a) for a in group._group_actions], "required": bool(group.required)}
    return {
        "option_strings": list(action.option_strings),
        "dest": action.dest,
        "kind": _kind(parser, action),
        "nargs": action.nargs,
        "type": None if action.type is None else getattr(action.type, "__name__", repr(action.type)),
        "choices": None if action.choices is None else [str(c) for c in action.choices],
        "required": bool(action.required),
        "mutually_exclusive": exclusive,
    }


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...], out: dict) -> None:
    groups = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    out[" ".join((PROG, *path))] = {
        "positionals": [a.dest for a in parser._actions if not a.option_strings],
        "arguments": {_key(a): _describe(parser, a, groups) for a in parser._actions},
    }
    sub = _subparsers(parser)
    if sub is not None:
        for name, child in sub.choices.items():
            _walk(child, (*path, name), out)


def build_contract() -> dict:
    """The contract of the current parser, as stored in ``tests/data/cli_contract.json``."""
    from openseg_r.cli import build_parser

    commands: dict = {}
    _walk(build_parser(), (), commands)
    return {"commands": commands}


def regenerate() -> None:
    SNAPSHOT.write_text(json.dumps(build_contract(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")


def contract_diff(old: dict, new: dict) -> list[str]:
    """One readable line per difference: commands and arguments added or removed, fields changed."""
    lines = []
    before, after = old["commands"], new["commands"]
    for command in sorted(before.keys() - after.keys()):
        lines.append(f"removed command: {command}")
    for command in sorted(after.keys() - before.keys()):
        lines.append(f"added command: {command}")
    for command in [c for c in after if c in before]:
        a, b = before[command], after[command]
        if a["positionals"] != b["positionals"]:
            lines.append(f"{command}: positionals {a['positionals']} -> {b['positionals']}")
        for name in sorted(a["arguments"].keys() - b["arguments"].keys()):
            lines.append(f"{command}: removed argument {name}")
        for name in sorted(b["arguments"].keys() - a["arguments"].keys()):
            lines.append(f"{command}: added argument {name} {json.dumps(b['arguments'][name])}")
        for name in [n for n in b["arguments"] if n in a["arguments"]]:
            x, y = a["arguments"][name], b["arguments"][name]
            for field in sorted(x.keys() | y.keys()):
                if x.get(field) != y.get(field):
                    lines.append(f"{command} {name}: {field} {json.dumps(x.get(field))} -> {json.dumps(y.get(field))}")
    return lines


# --- command paths and the smallest command lines that parse --------------------------------------


def _paths() -> list[tuple[str, ...]]:
    """The snapshot's command paths (so a command that disappears fails loudly), else the live parser's."""
    contract = json.loads(SNAPSHOT.read_text(encoding="utf-8")) if SNAPSHOT.is_file() else build_contract()
    commands = contract["commands"]
    return [tuple(name.split()[1:]) for name in commands]


PATHS = _paths()
LEAVES = [p for p in PATHS if p and not any(q[: len(p)] == p and len(q) > len(p) for q in PATHS)]


def _ids(path: tuple[str, ...]) -> str:
    return " ".join(path) or "(top level)"


def _value(action: argparse.Action) -> str:
    if action.choices is not None:
        return str(next(iter(action.choices)))
    return "1" if action.type in (int, float) else "x"


def _own_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """The required arguments of one level (not its subcommand), with placeholder values."""
    argv: list[str] = []
    chosen = set()
    for group in parser._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            chosen.add(id(first))
            argv += [first.option_strings[0], _value(first)] if first.option_strings else [_value(first)]
    positionals: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or id(action) in chosen:
            continue
        if action.option_strings:
            if action.required:
                argv += [action.option_strings[0]] + ([] if action.nargs == 0 else [_value(action)])
        elif action.nargs not in ("?", "*"):
            positionals += [_value(action)] * (action.nargs if isinstance(action.nargs, int) else 1)
    return argv + positionals


def minimal_argv(path: tuple[str, ...], extra_at: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The shortest command line that reaches ``path`` (or its first subcommand, down to a leaf)
    and parses; ``extra`` goes in right after the arguments of level ``extra_at``."""
    from openseg_r.cli import build_parser

    parser, argv, depth = build_parser(), [], 0
    names = list(path)
    while True:
        argv += _own_arguments(parser)
        if depth == extra_at:
            argv += list(extra)
        sub = _subparsers(parser)
        if sub is None:
            return argv
        name = names[depth] if depth < len(names) else next(iter(sub.choices))
        argv.append(name)
        parser = sub.choices[name]
        depth += 1


# --- helpers ------------------------------------------------------------------------------------


def one_line(capsys, prefix: str = "openseg-r: error:") -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


# --- the tests ------------------------------------------------------------------------------------


def test_parser_matches_the_snapshot():
    snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    differences = contract_diff(snapshot, build_contract())
    assert not differences, (
        "the command line changed (if intended: python tests/test_cli_contract.py --regenerate):\n  "
        + "\n  ".join(differences)
    )


def test_snapshot_covers_every_command():
    assert {" ".join(p) for p in PATHS} == {
        "",
        "segment",
        "vocabularies",
        "reason",
        "reason generic",
        "reason export",
        "reason import",
        "runs",
        "runs list",
        "runs show",
        "runs diff",
        "runs replay",
        "runs resume",
        "runs report",
        "graph",
        "eval",
        "eval-merge",
        "serve",
        "serve mcp",
        "serve web",
        "lmm",
        "lmm check",
        "lmm serve",
        "segmenters",
    }


def test_contract_diff_names_what_changed():
    old = {"commands": {"openseg-r x": {"positionals": [], "arguments": {"--a": {"required": False}}}}}
    new = {
        "commands": {
            "openseg-r x": {"positionals": [], "arguments": {"--a": {"required": True}, "--b": {}}},
            "openseg-r y": {"positionals": [], "arguments": {}},
        }
    }
    assert contract_diff(old, new) == [
        "added command: openseg-r y",
        "openseg-r x: added argument --b {}",
        "openseg-r x --a: required false -> true",
    ]


@pytest.mark.parametrize("path", [*PATHS, ("eval", "merge")], ids=lambda p: _ids(p))
def test_help_exits_0_and_prints_usage(path, capsys):
    assert call(*path, "--help") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: {PROG}"), captured.out
    if path != ("eval", "merge"):  # the alias prints eval-merge's usage
        assert captured.out.splitlines()[0].startswith(" ".join(("usage:", PROG, *path))), captured.out
    assert captured.err == ""


@pytest.mark.parametrize("path", LEAVES, ids=_ids)
def test_minimal_command_line_parses(path):
    from openseg_r.cli import build_parser

    args = build_parser().parse_args(minimal_argv(path))
    assert args.command == path[0]


@pytest.mark.parametrize("path", PATHS, ids=_ids)
def test_unknown_flag_exits_2_with_one_line(path, capsys):
    argv = minimal_argv(path, extra_at=len(path), extra=(UNKNOWN,))
    assert call(*argv) == 2
    assert f"unrecognized arguments: {UNKNOWN}" in one_line(capsys)


@pytest.mark.parametrize("path", PATHS, ids=_ids)
def test_unknown_flag_alone_exits_2_with_one_line(path, capsys):
    assert call(*path, UNKNOWN) == 2
    one_line(capsys)


BAD_USAGE = [
    ([], "the following arguments are required:"),
    (["segment"], "required: image, --out"),
    (["segment", "a.png", "--out", "o"], "one of the arguments --classes --vocab is required"),
    (["segment", "a.png", "--classes", "cat", "--vocab", "voc21", "--out", "o"], "not allowed with argument"),
    (["segment", "a.png", "--classes", "cat", "--out", "o", "--image-reasoning", "nope"], "invalid choice"),
    (["segment", "a.png", "--classes", "cat", "--out", "o", "--crop", "big"], "invalid int value"),
    (["eval"], "required: --dataset, --root"),
    (["eval", "--root", "r"], "required: --dataset"),
    (["eval", "--dataset", "nope", "--root", "r"], "invalid choice"),
    (["eval-merge", "--out", "o"], "required: folders"),
    (["eval-merge", "a"], "required: --out"),
    (["eval", "merge", "a"], "required: --out"),
    (["reason"], "required: action"),
    (["reason", "generic"], "one of the arguments --classes --vocab is required"),
    (["reason", "export"], "required: -o/--out"),
    (["reason", "import"], "required: file"),
    (["runs"], "required: action"),
    (["runs", "show"], "required: run"),
    (["runs", "diff", "a"], "required: run_b"),
    (["runs", "replay", "a"], "required: --from"),
    (["runs", "report", "a"], "required: -o/--out"),
    (["serve"], "required: server"),
    (["serve", "mcp", "--port", "http"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD_USAGE, ids=[" ".join(a) or "(no arguments)" for a, _ in BAD_USAGE])
def test_bad_usage_exits_2_with_one_line(argv, message, capsys):
    assert call(*argv) == 2
    assert message in one_line(capsys)


def test_version_exits_0(capsys):
    assert call("--version") == 0
    assert capsys.readouterr().out.startswith(f"{PROG} ")


# --- errors inside commands ----------------------------------------------------------------------


def test_eval_merge_alias_reaches_the_merge(monkeypatch, tmp_path, capsys):
    from openseg_r.errors import ConfigError
    from openseg_r.evals import runner

    seen = []

    def merge(folders, out):
        seen.append(([str(f) for f in folders], str(out)))
        raise ConfigError("merge reached")

    monkeypatch.setattr(runner, "merge", merge)
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for spelling in (["eval", "merge"], ["eval-merge"]):
        assert call(*spelling, a, b, "--out", out) == 2
        assert one_line(capsys) == "openseg-r: error: merge reached"
    assert seen == [([str(a), str(b)], str(out))] * 2


@pytest.mark.parametrize("spelling", [["eval", "merge"], ["eval-merge"]], ids=" ".join)
def test_merging_missing_folders_exits_2_with_one_line(spelling, tmp_path, capsys):
    missing = tmp_path / "no-such-shard"
    assert call(*spelling, missing, tmp_path / "also-missing", "--out", tmp_path / "merged") == 2
    assert "is not an evaluation folder" in one_line(capsys)
    assert not (tmp_path / "merged").exists()


def test_segment_missing_image_exits_2_with_one_line(tmp_path, capsys):
    assert call("segment", tmp_path / "missing.png", "--classes", "cat", "--out", tmp_path / "out") == 2
    assert "image not found" in one_line(capsys)


@pytest.mark.parametrize("content", ["truncated png", "not an image"])
def test_segment_corrupt_image_exits_2_with_one_line(content, tmp_path, capsys):
    import io

    import numpy as np
    from PIL import Image

    bad = tmp_path / "bad.png"
    if content == "truncated png":
        noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        bad.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    else:
        bad.write_bytes(b"hello, not an image\n" * 10)
    assert call("segment", bad, "--classes", "cat", "--out", tmp_path / "out") == 2
    assert "image" in one_line(capsys)


def test_segment_unknown_vocabulary_file_exits_2(tmp_path, capsys):
    assert call("segment", tmp_path / "a.png", "--vocab", tmp_path / "nope.txt", "--out", tmp_path / "out") == 2
    one_line(capsys)


@pytest.mark.parametrize(
    "action",
    [["replay", "nosuchrun", "--from", "segmentation"], ["resume", "nosuchrun"], ["show", "nosuchrun"]],
    ids=lambda a: a[0],
)
def test_runs_unknown_run_exits_2_with_one_line(action, tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    RunsDB(db).close()  # an empty database (a missing one has its own message, tests/test_runs_lifecycle.py)
    assert call("runs", "--runs-db", db, *action) == 2
    assert one_line(capsys) == f"openseg-r: error: no run 'nosuchrun' in {db} (see `openseg-r runs list`)"


def test_runs_list_on_an_empty_database(tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    RunsDB(db).close()
    assert call("runs", "--runs-db", db, "list") == 0
    captured = capsys.readouterr()
    assert captured.out == f"no runs recorded in {db}\n" and captured.err == ""


def _raise(exc):
    def raising(*args, **kwargs):
        raise exc

    return raising


def test_vocabularies_lists_through_the_library(monkeypatch, capsys):
    import openseg_r.vocab
    from openseg_r.errors import VocabularyError

    monkeypatch.setattr(openseg_r.vocab, "builtin_names", _raise(VocabularyError("no vocabularies here")))
    assert call("vocabularies") == 2
    assert one_line(capsys) == "openseg-r: error: no vocabularies here"


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_internal_error_exits_1_with_one_line(debug, monkeypatch, capsys):
    import openseg_r.vocab

    monkeypatch.setattr(openseg_r.vocab, "builtin_names", _raise(RuntimeError("boom")))
    assert call(*(["--debug"] if debug else []), "vocabularies") == 1
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith("openseg-r: internal error") and "RuntimeError: boom" in last and "--debug" in last
    if debug:
        assert "Traceback" in err
    else:
        assert err.splitlines() == [last]


def test_internal_error_in_segment_exits_1(monkeypatch, tmp_path, capsys):
    import openseg_r.vocab

    monkeypatch.setattr(openseg_r.vocab, "load_named_vocabulary", _raise(RuntimeError("boom")))
    assert call("segment", tmp_path / "a.png", "--vocab", "voc21", "--out", tmp_path / "out") == 1
    line = one_line(capsys, prefix="openseg-r: internal error")
    assert "boom" in line and "--debug" in line


@pytest.mark.parametrize("where", ["vocabularies", "segment"])
def test_interrupt_exits_130(where, monkeypatch, tmp_path, capsys):
    import openseg_r._support.images
    import openseg_r.vocab

    if where == "vocabularies":
        monkeypatch.setattr(openseg_r.vocab, "builtin_names", _raise(KeyboardInterrupt()))
        argv = ["vocabularies"]
    else:
        monkeypatch.setattr(openseg_r._support.images, "load_image", _raise(KeyboardInterrupt()))
        argv = ["segment", tmp_path / "a.png", "--classes", "cat", "--out", tmp_path / "out"]
    assert call(*argv) == 130
    assert "interrupted" in one_line(capsys, prefix="openseg-r:")
    assert not (tmp_path / "out").exists()


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        sys.exit(f"usage: python {Path(__file__).name} --regenerate   (writes {SNAPSHOT})")
