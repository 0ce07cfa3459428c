"""The README and the guides in docs/ hold their promises: every command they show parses
with the real parser, every Python block compiles and imports only names of the public face
(``openseg_r.__all__``), every link resolves, and the README stays short enough to read in
one sitting."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

import openseg_r
from openseg_r.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 400
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = ("bash", "sh", "console", "")


def blocks(page: Path, languages: tuple[str, ...]) -> list[str]:
    return [body for language, body in FENCE.findall(page.read_text(encoding="utf-8")) if language in languages]


def commands(page: Path) -> list[str]:
    """The ``openseg-r`` command lines of a page's shell blocks (continuations joined, one
    command of a ``&&`` chain or a pipe each); usage synopses (``[--flag]``, ``...``) are not
    commands."""
    found = []
    for body in blocks(page, SHELL):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            for part in re.split(r"&&|\|\||;|\|(?!\w)", line):
                part = part.strip()
                if part.startswith("openseg-r ") and "[" not in part and "..." not in part and "…" not in part:
                    found.append(part)
    return found


def all_commands() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), command) for page in PAGES for command in commands(page)]


def test_the_readme_is_read_in_one_sitting():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_links_every_guide():
    text = README.read_text(encoding="utf-8")
    guides = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert {name for name in guides if f"(docs/{name}" not in text} == set()


def test_the_pages_show_commands_and_the_check_finds_them():
    found = all_commands()
    assert len(found) > 40
    assert ("README.md", "openseg-r segmenters") in found
    assert any(page == "docs/segmenters.md" and "--segmenter-option attention=sclip" in c for page, c in found)


@pytest.mark.parametrize("page, command", all_commands())
def test_every_command_shown_parses(page, command):
    argv = shlex.split(command, comments=True)[1:]
    argv = [arg for arg in argv if not arg.startswith((">", "2>"))]
    if argv[:2] == ["eval", "merge"]:  # the spelling cli.main accepts for eval-merge
        argv = ["eval-merge", *argv[2:]]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # --help exits 0; anything else is a command that no longer exists
        assert exc.code == 0, f"{page}: {command}"


def test_the_command_check_catches_a_renamed_flag():
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(shlex.split("segment photo.jpg --vocab voc21 --no-such-flag --out out"))
    assert caught.value.code == 2


def python_blocks() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), body) for page in PAGES for body in blocks(page, ("python",))]


@pytest.mark.parametrize("page, code", python_blocks())
def test_every_python_block_compiles_and_imports_only_the_public_face(page, code):
    tree = ast.parse(code, filename=page)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("openseg_r"):
            for alias in node.names:
                assert alias.name in openseg_r.__all__, f"{page}: {node.module}.{alias.name} is not in __all__"
                public = getattr(openseg_r, alias.name)
                if node.module != "openseg_r":
                    module = __import__(node.module, fromlist=[alias.name])
                    assert getattr(module, alias.name) is public


def test_every_name_of_the_public_face_resolves():
    for name in openseg_r.__all__:
        assert getattr(openseg_r, name) is not None, name
    assert sorted(openseg_r.__all__) == sorted(set(openseg_r.__all__))
    with pytest.raises(AttributeError):
        openseg_r.facade  # noqa: B018  (the old module names are gone, not aliased)


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path) if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
