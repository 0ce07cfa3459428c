"""Writes OpenSeg-R's synonym class lists as built-in vocabularies.

    python scripts/import_upstream_vocab.py UPSTREAM_DIR

UPSTREAM_DIR holds the ``*_with_prompt_eng.txt`` files of the OpenSeg-R code (MAFT+,
``maft/data/datasets/``; MIT, Copyright (c) 2024 Siyu Jiao) and their LICENSE. Each line
``ID:name,synonym,...`` becomes one class line ``name, synonym, ...``; the
``invalid_class_id`` placeholders are dropped, so line i of the output is train id i.
Names are copied as they are (a synonym repeated within a class is kept once by the
vocabulary parser).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "openseg_r" / "vocab" / "data"
FILES = {  # built-in name -> (upstream file, what it is)
    "voc21_syn": ("pascal_voc_21_with_prompt_eng.txt", "PASCAL VOC 2012 with background, 21 classes"),
    "pc59_syn": ("pascal_ctx_59_with_prompt_eng.txt", "PASCAL Context, 59 classes"),
    "pc459_syn": ("pascal_ctx_459_with_prompt_eng.txt", "PASCAL Context, 459 classes"),
    "ade150_syn": ("ade20k_150_with_prompt_eng.txt", "ADE20K, 150 classes"),
    "ade847_syn": ("ade20k_847_with_prompt_eng.txt", "ADE20K-Full, 847 classes"),
    "coco_stuff171_syn": ("coco_stuff_with_prompt_eng.txt", "COCO-Stuff 164k, 171 classes"),
    "cityscapes_syn": ("cityscapes_with_prompt_eng.txt", "Cityscapes, 19 classes"),
}


def convert(source: Path, title: str) -> str:
    lines = [
        f"# {title}, with the synonyms OpenSeg-R's classifiers use; label id = line index.",
        f"# Source: OpenSeg-R (MAFT+) maft/data/datasets/{source.name}; MIT, see LICENSE-openseg-r.txt.",
        "# Converted by scripts/import_upstream_vocab.py (invalid_class_id placeholders dropped);",
        '# a class whose first name repeats an earlier one is shown as "name (id N)", its names unchanged.',
    ]
    shown: set[str] = set()
    for raw in source.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        _, sep, names = raw.partition(":")
        if not sep:
            raise SystemExit(f"{source}: line without an id: {raw!r}")
        if names.strip() == "invalid_class_id":
            continue
        queries = [name.strip() for name in names.split(",")]
        label = len(lines) - 4
        display = queries[0] if queries[0].casefold() not in shown else f"{queries[0]} (id {label}): "
        shown.add(queries[0].casefold())
        lines.append((display if display.endswith(": ") else "") + ", ".join(queries))
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    upstream = Path(sys.argv[1])
    for name, (file, title) in FILES.items():
        (TARGET / f"{name}.txt").write_text(convert(upstream / file, title), encoding="utf-8")
    shutil.copyfile(upstream / "LICENSE", TARGET / "LICENSE-openseg-r.txt")
    print(f"wrote {len(FILES)} vocabularies and the licence to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
