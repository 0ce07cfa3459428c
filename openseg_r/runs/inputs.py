"""What ``openseg-r segment`` takes as input: files, folders and glob patterns, expanded
to a list of image paths, each with its own output folder name.

Only the standard library is used here (no image is opened: a file that is not an image
fails later, as that image's own error).

- A **file** is taken as given, whatever its name (a non-image fails when it is read).
- A **folder** gives its image files (:data:`IMAGE_EXTENSIONS`, any case), recursively,
  in sorted order of their paths; names starting with ``.`` (hidden files and folders,
  macOS ``._*`` files) are left out, and so is the output folder when it lies inside.
- A **glob** (an argument with ``*``, ``?`` or ``[`` that is not an existing file) is
  expanded with ``glob.glob(pattern, recursive=True)`` (``**`` crosses folders), sorted;
  matched files must have an image extension, matched folders are expanded as folders.
- The same file reached twice is taken once, at its first place.

Output folders are named after each image's path relative to the *common folder* (the
deepest folder holding every folder argument and every image's parent): its folders and
its stem joined by ``__`` (``a/b/cat.jpg`` -> ``a__b__cat``). Names that would clash,
ignoring case (``cat.jpg`` and ``cat.png``), keep their extension (``cat_jpg``,
``cat_png``); a clash left after that gets ``-2``, ``-3``... in input order. Names over
:data:`MAX_NAME_BYTES` are cut and end with a hash of the relative path.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field

from openseg_r.errors import ConfigError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
MAX_NAME_BYTES = 120  # well under the 255 bytes most file systems allow a name
GLOB_CHARACTERS = "*?["


@dataclass
class Inputs:
    images: list[str]  # paths, spelled as given (a folder's files joined onto the folder as typed)
    base: str  # the common folder, absolute
    many: bool  # several arguments, or a folder or a glob: one output folder per image
    unmatched: list[str] = field(default_factory=list)  # folder or glob arguments that gave no image


def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def is_glob(argument: str) -> bool:
    return any(c in argument for c in GLOB_CHARACTERS) and not os.path.isfile(argument)


def expand_inputs(arguments: list[str], exclude: str | None = None) -> Inputs:
    """The images the arguments name, in order, without duplicates. ``exclude`` (the output
    folder) is never searched. Raises :class:`ConfigError` when nothing matched at all."""
    many = len(arguments) > 1 or any(os.path.isdir(a) or is_glob(a) for a in arguments)
    skip = _key(exclude) if exclude else None
    images: list[str] = []
    seen: set[str] = set()
    anchors: list[str] = []  # folders the common folder must hold
    unmatched: list[str] = []

    def add(path: str, searched: bool = True) -> None:
        key = _key(path)
        if key not in seen and not (searched and skip and _inside(key, skip)):
            seen.add(key)
            images.append(path)
            anchors.append(os.path.dirname(os.path.abspath(path)))

    for argument in arguments:
        before = len(images)
        if os.path.isdir(argument):
            anchors.append(os.path.abspath(argument))
            for path in _walk(argument, skip):
                add(path)
        elif is_glob(argument):
            for match in sorted(glob.glob(argument, recursive=True)):
                if os.path.isdir(match):
                    anchors.append(os.path.abspath(match))
                    for path in _walk(match, skip):
                        add(path)
                elif os.path.isfile(match) and is_image_name(match):
                    add(match)
        else:
            add(argument, searched=False)  # a file, or a missing path: it fails as that image's error
            continue
        if len(images) == before:
            unmatched.append(argument)
    if not images:
        where = ", ".join(unmatched) or ", ".join(arguments)
        raise ConfigError(
            f"no image files found in {where} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, in any case)"
        )
    return Inputs(images, _common_folder(anchors), many, unmatched)


def _walk(folder: str, skip: str | None) -> list[str]:
    """A folder's image files, recursively, sorted by path; hidden names and ``skip`` left out."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [
            d for d in folders if not d.startswith(".") and not (skip and _key(os.path.join(root, d)) == skip)
        ]
        found += [os.path.join(root, f) for f in files if not f.startswith(".") and is_image_name(f)]
    return sorted(found, key=lambda p: os.path.relpath(p, folder).split(os.sep))


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def _inside(key: str, folder_key: str) -> bool:
    return key == folder_key or key.startswith(folder_key.rstrip(os.sep) + os.sep)


def _common_folder(folders: list[str]) -> str:
    try:
        return os.path.commonpath(folders)
    except ValueError:  # different drives (Windows): no common folder
        return ""


def output_names(
    images: list[str], base: str, reserved: dict[str, str] | None = None, taken: set[str] | None = None
) -> list[str]:
    """One output folder name per image (see the module's docstring). ``reserved`` maps an
    image to the folder an earlier run gave it (``--resume`` keeps it); ``taken`` holds
    names no image may get (compared ignoring case)."""
    reserved = reserved or {}
    used = {name.casefold() for name in (taken or set())}
    names: list[str | None] = [None] * len(images)
    for i, image in enumerate(images):  # an image keeps the folder it had, if nobody took it first
        folder = reserved.get(image)
        if folder and folder.casefold() not in used:
            names[i] = folder
            used.add(folder.casefold())
    relative = [_relative(image, base) for image in images]
    plain = [_folder_name(rel, with_extension=False) for rel in relative]
    counts: dict[str, int] = {}
    for i, name in enumerate(plain):
        if names[i] is None:
            counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    for i, rel in enumerate(relative):
        if names[i] is not None:
            continue
        name = plain[i] if counts[plain[i].casefold()] == 1 else _folder_name(rel, with_extension=True)
        unique, number = name, 1
        while unique.casefold() in used:
            number += 1
            unique = f"{name}-{number}"
        names[i] = unique
        used.add(unique.casefold())
    return [name for name in names if name is not None]


def _relative(image: str, base: str) -> str:
    path = os.path.abspath(image)
    if base:
        return os.path.relpath(path, base)
    return os.path.splitdrive(path)[1].lstrip("\\/")


def _folder_name(relative: str, *, with_extension: bool) -> str:
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    stem, extension = os.path.splitext(parts[-1]) if parts else ("image", "")
    if with_extension and extension:
        stem = f"{stem}_{extension.lstrip('.')}"
    name = "__".join([*parts[:-1], stem or parts[-1]]) or "image"
    if name in (".", ".."):
        name = "image"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        cut = name.encode("utf-8", "surrogateescape")[: MAX_NAME_BYTES - 11].decode("utf-8", "ignore")
        name = f"{cut}-{digest}"
    return name
