"""OpenSeg-R's synonym vocabularies: shipped as built-ins, with their licence, and with the
upstream reasoning file they reproduce upstream's prompt sentences exactly."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from openseg_r import OpenSegR
from openseg_r.vocab import builtin_names, load_builtin

DATA = Path(__file__).resolve().parent / "data"
UPSTREAM_REASONING = DATA / "pc59_class_reason.json"
UPSTREAM_PC59 = DATA / "upstream_vocab" / "pascal_ctx_59_with_prompt_eng.txt"
SYNONYM_VOCABULARIES = {
    "voc21_syn": 21,
    "pc59_syn": 59,
    "pc459_syn": 459,
    "ade150_syn": 150,
    "ade847_syn": 847,
    "coco_stuff171_syn": 171,
    "cityscapes_syn": 19,
}


def upstream_synonyms() -> list[list[str]]:
    """Parsed independently of the product: `ID:name,synonym,...`, the placeholder dropped."""
    lines = [line.partition(":")[2] for line in UPSTREAM_PC59.read_text().splitlines() if line.strip()]
    return [[name.strip() for name in line.split(",")] for line in lines if line != "invalid_class_id"]


@pytest.mark.parametrize("name, classes", sorted(SYNONYM_VOCABULARIES.items()))
def test_synonym_vocabularies_are_built_in(name, classes):
    assert name in builtin_names()
    vocabulary = load_builtin(name.replace("_syn", "-syn"))
    assert len(vocabulary.classes) == classes
    assert len(vocabulary.classes) == len(load_builtin(name.removesuffix("_syn")).classes)  # same label ids


def test_the_licence_ships_with_them():
    licence = (resources.files("openseg_r.vocab") / "data" / "LICENSE-openseg-r.txt").read_text()
    assert "MIT License" in licence and "Siyu Jiao" in licence


def test_the_background_line_of_voc21_syn_holds_stuff_words():
    vocabulary = load_builtin("voc21-syn")
    background = vocabulary.classes[vocabulary.background_index]
    assert vocabulary.background_index == 0 and {"sky", "wall", "tree", "floor"} <= set(background.queries)
    assert load_builtin("pc59-syn").classes[0].queries == ["aeroplane", "aeroplanes", "airplanes", "airplane"]


def _sentences(vocabulary: str, tiny_segmenter, voc) -> dict[str, Counter]:
    model = OpenSegR(segmenter=tiny_segmenter, lmm=f"replay:{UPSTREAM_REASONING}")
    result = model.segment(voc["rgb"][:64, :64], vocabulary, use_image_reasoning=False)
    return {c.name: Counter(p for row in c.phrases() for p in row) for c in result.state.prompts.classes}


def test_replaying_the_upstream_file_with_pc59_syn_gives_upstream_sentences_for_all_59(tiny_segmenter, voc):
    reasoning = json.loads(UPSTREAM_REASONING.read_text())
    keys = list(reasoning)  # the file's keys, in class order
    expected = [
        Counter(f"{s} that has {a}" for s in names for a in reasoning[key]["class_des"][:3])
        for names, key in zip(upstream_synonyms(), keys, strict=True)
    ]
    got = list(_sentences("pc59_syn", tiny_segmenter, voc).values())
    assert sum(g == e for g, e in zip(got, expected)) == 59
    # with single names (NACLIP's pc59 list) only the 9 classes without synonyms upstream match
    bare = list(_sentences("pc59", tiny_segmenter, voc).values())
    assert sum(g == e for g, e in zip(bare, expected)) == 9
