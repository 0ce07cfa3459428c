"""Vocabularies: built-in benchmark class lists and user-given ones.

Text format (files and built-ins), one class per line, in label order::

    # comment
    cat
    person, person in shirt, person in jeans      <- synonyms, first is the display name
    background: sky, wall, tree                   <- display name that is not itself a query

A class whose display name is ``background`` is the background class: it is never
removed by the class filter and takes pixels whose top probability is low.

For panoptic output a class may end with a mark, ``[thing]`` (countable: person, car) or
``[stuff]`` (amorphous: road, sky)::

    person, pedestrian [thing]
    road [stuff]

On the command line, ``--classes "cat, sofa|couch, lamp [thing], sky [stuff]"`` separates
classes with commas and synonyms with ``|``. The built-in vocabularies carry their
datasets' own things and stuff (``data/things.json``, with its sources).
"""

from __future__ import annotations

import json
import re
import unicodedata
from importlib import resources
from pathlib import Path

from openseg_r.errors import VocabularyError
from openseg_r.schemas import ClassKind, Vocabulary, VocabularyClass

MAX_CLASSES = 5000
MAX_NAME_CHARS = 200
BACKGROUND = "background"

BUILTIN_FILES = {
    "voc20": "voc20.txt",
    "voc21": "voc21.txt",
    "pc59": "pc59.txt",
    "pc60": "pc60.txt",
    "pc459": "pc459.txt",
    "ade150": "ade150.txt",
    "ade847": "ade847.txt",
    "coco_stuff171": "coco_stuff171.txt",
    "coco_object": "coco_object.txt",
    "cityscapes": "cityscapes.txt",
    "coco_panoptic": "coco_panoptic.txt",
    # OpenSeg-R's (MAFT+) synonym lists: the vocabularies its published numbers use
    "voc21_syn": "voc21_syn.txt",
    "pc59_syn": "pc59_syn.txt",
    "pc459_syn": "pc459_syn.txt",
    "ade150_syn": "ade150_syn.txt",
    "ade847_syn": "ade847_syn.txt",
    "coco_stuff171_syn": "coco_stuff171_syn.txt",
    "cityscapes_syn": "cityscapes_syn.txt",
    # ProxyCLIP's class lists where they differ from the ones above
    "proxyclip_voc21": "proxyclip_voc21.txt",
    "proxyclip_voc20": "proxyclip_voc20.txt",
    "proxyclip_coco_object": "proxyclip_coco_object.txt",
}
ALIASES = {
    "voc": "voc21",
    "pascal_context59": "pc59",
    "pascal_context60": "pc60",
    "ade20k": "ade150",
    "ade20k150": "ade150",
    "ade20k847": "ade847",
    "coco_stuff": "coco_stuff171",
    "cocostuff": "coco_stuff171",
    "coco_obj": "coco_object",
    "city_scapes": "cityscapes",
    "coco_panoptic133": "coco_panoptic",
}


def builtin_names() -> list[str]:
    """Names of the built-in vocabularies that ship with this installation."""
    data = resources.files("openseg_r.vocab") / "data"
    return [name for name, file in BUILTIN_FILES.items() if (data / file).is_file()]


def load_builtin(name: str) -> Vocabulary:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in BUILTIN_FILES or key not in builtin_names():
        raise VocabularyError(f"unknown vocabulary {name!r}; built-in ones are: {', '.join(builtin_names())}")
    text = (resources.files("openseg_r.vocab") / "data" / BUILTIN_FILES[key]).read_text(encoding="utf-8")
    return with_dataset_kinds(parse_vocabulary_text(text, name=key), key)


def with_dataset_kinds(vocabulary: Vocabulary, key: str) -> Vocabulary:
    """The built-in ``key`` with its dataset's things and stuff (``data/things.json``): the
    listed label ids are things, every other class stuff, the background neither."""
    table = json.loads((resources.files("openseg_r.vocab") / "data" / "things.json").read_text(encoding="utf-8"))
    entry = table.get(key)
    if entry is None:
        return vocabulary
    things = set(entry["things"])
    classes = [
        c if c.is_background else c.model_copy(update={"kind": "thing" if i in things else "stuff"})
        for i, c in enumerate(vocabulary.classes)
    ]
    return vocabulary.model_copy(update={"classes": classes, "kinds_source": entry["source"]})


def load_vocabulary_file(path: str | Path) -> Vocabulary:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VocabularyError(f"vocabulary file not found: {path}") from None
    except UnicodeDecodeError:
        raise VocabularyError(f"vocabulary file is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise VocabularyError(f"cannot read vocabulary file {path}: {exc.strerror}") from None
    return parse_vocabulary_text(text, name=path.stem)


def parse_vocabulary_text(text: str, name: str | None = None) -> Vocabulary:
    """Parse the one-class-per-line format (see the module docstring)."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line, kind = split_kind_mark(line)
        display, _, rest = line.partition(":") if _has_display_prefix(line) else ("", "", line)
        entries.append((display.strip() or None, [part for part in rest.split(",")], kind))
    return _build(entries, name)


def parse_class_list(classes: str | list[str], name: str | None = None) -> Vocabulary:
    """Parse ``"cat, sofa|couch"`` or ``["cat", "sofa|couch"]``: classes and ``|`` synonyms."""
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    entries = []
    for item in items:
        if not isinstance(item, str):
            raise VocabularyError(f"class names must be strings, got {type(item).__name__}")
        item, kind = split_kind_mark(item)
        entries.append((None, item.split("|"), kind))
    return _build(entries, name)


def resolve_vocabulary(value: str | list[str] | Vocabulary) -> Vocabulary:
    """Accept a Vocabulary, a list of names, a built-in name, a file path or a comma list."""
    if isinstance(value, Vocabulary):
        return value
    if isinstance(value, list):
        return parse_class_list(value)
    text = value.strip()
    key = ALIASES.get(text.lower().replace("-", "_"), text.lower().replace("-", "_"))
    if key in BUILTIN_FILES and "," not in text:
        return load_builtin(text)
    if "," not in text and "\n" not in text and Path(text).is_file():
        return load_vocabulary_file(text)
    return parse_class_list(text)


def load_named_vocabulary(value: str) -> Vocabulary:
    """A built-in name or a vocabulary file, nothing else (for ``--vocab``)."""
    key = value.strip().lower().replace("-", "_")
    if ALIASES.get(key, key) in BUILTIN_FILES:
        return load_builtin(value)
    if Path(value).is_file():
        return load_vocabulary_file(value)
    raise VocabularyError(f"unknown vocabulary {value!r}: not a built-in ({', '.join(builtin_names())}) and not a file")


def _has_display_prefix(line: str) -> bool:
    head, sep, _ = line.partition(":")
    return bool(sep) and "," not in head


def _clean_name(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw)
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    text = " ".join(text.split())
    if len(text) > MAX_NAME_CHARS:
        raise VocabularyError(
            f"class name is {len(text)} characters, over the limit of {MAX_NAME_CHARS}: {text[:40]!r}…"
        )
    return text


KIND_MARK = re.compile(r"\s*\[([^\[\]]*)\]\s*$")


def split_kind_mark(text: str) -> tuple[str, ClassKind | None]:
    """``"road [stuff]"`` -> ``("road", "stuff")``; a bracketed mark that is neither
    ``[thing]`` nor ``[stuff]`` is one line."""
    found = KIND_MARK.search(text)
    if found is None:
        return text, None
    mark = found.group(1).strip().lower()
    if mark not in ("thing", "stuff"):
        raise VocabularyError(
            f"class {_clean_name(text[: found.start()])[:60]!r} is marked [{found.group(1)[:30]}]: a mark is "
            "[thing] or [stuff]"
        )
    return text[: found.start()], mark  # type: ignore[return-value]


def _build(entries: list[tuple[str | None, list[str], ClassKind | None]], name: str | None) -> Vocabulary:
    classes: list[VocabularyClass] = []
    seen: dict[str, int] = {}
    for display, raw_queries, kind in entries:
        queries: list[str] = []
        for raw in raw_queries:
            query = _clean_name(raw)
            if query and query not in queries:
                queries.append(query)
        display_name = _clean_name(display) if display else (queries[0] if queries else "")
        if not display_name and not queries:
            continue  # an empty item, e.g. a trailing comma
        if not queries:
            queries = [display_name]
        folded = display_name.casefold()
        if folded in seen:
            raise VocabularyError(
                f"duplicate class name {display_name!r} (classes {seen[folded] + 1} and {len(classes) + 1})"
            )
        seen[folded] = len(classes)
        if kind is not None and folded == BACKGROUND:
            raise VocabularyError("the background class is no class in panoptic output: leave it unmarked")
        classes.append(
            VocabularyClass(name=display_name, queries=queries, is_background=folded == BACKGROUND, kind=kind)
        )
    if not classes:
        raise VocabularyError("the vocabulary is empty: give at least one class name")
    if len(classes) > MAX_CLASSES:
        raise VocabularyError(f"the vocabulary has {len(classes)} classes, over the limit of {MAX_CLASSES}")
    return Vocabulary(name=name, classes=classes)
