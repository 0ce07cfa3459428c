from __future__ import annotations

import pytest

from openseg_r.errors import VocabularyError
from openseg_r.vocab import builtin_names, load_builtin, parse_class_list, parse_vocabulary_text, resolve_vocabulary

EXPECTED = {
    "voc20": 20,
    "voc21": 21,
    "pc59": 59,
    "pc60": 60,
    "pc459": 459,
    "ade150": 150,
    "ade847": 847,
    "coco_stuff171": 171,
    "coco_object": 81,
    "cityscapes": 19,
}


@pytest.mark.parametrize("name,count", EXPECTED.items())
def test_builtin_sizes(name, count):
    assert name in builtin_names()
    assert len(load_builtin(name).classes) == count


def test_background_classes_and_synonyms():
    voc = load_builtin("voc21")
    assert voc.background_index == 0 and voc.classes[0].name == "background"
    assert "background" not in voc.classes[0].queries and "sky" in voc.classes[0].queries
    person = voc.classes[voc.names.index("person")]
    assert "person in shirt" in person.queries
    tv = voc.classes[voc.names.index("tvmonitor")]
    assert tv.queries == ["television monitor", "tv monitor", "monitor", "television", "screen"]
    assert load_builtin("voc20").background_index is None


def test_class_list_with_synonyms_unicode_and_punctuation():
    vocab = parse_class_list("cat, sofa|couch ,  Crème brûlée , traffic-light (red),  ")
    assert vocab.names == ["cat", "sofa", "Crème brûlée", "traffic-light (red)"]
    assert vocab.classes[1].queries == ["sofa", "couch"]


def test_file_format(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# mine\nbackground: sky, wall\n\nperson, man, woman\n日本の猫\n", encoding="utf-8")
    vocab = resolve_vocabulary(str(path))
    assert vocab.names == ["background", "person", "日本の猫"]
    assert vocab.classes[0].queries == ["sky", "wall"] and vocab.background_index == 0


@pytest.mark.parametrize("text", ["", " , ,", "\n# only a comment\n"])
def test_empty_vocabulary(text):
    with pytest.raises(VocabularyError, match="empty"):
        parse_vocabulary_text(text) if "\n" in text else parse_class_list(text)


def test_duplicates_are_a_clear_error():
    with pytest.raises(VocabularyError, match="duplicate class name 'Cat'"):
        parse_class_list("cat, dog, Cat")


def test_absurd_names():
    with pytest.raises(VocabularyError, match="characters"):
        parse_class_list(["x" * 500])
    assert parse_class_list(["a\x00b\tc"]).names == ["ab c"]


def test_unknown_builtin_and_missing_file():
    with pytest.raises(VocabularyError, match="unknown vocabulary"):
        load_builtin("imagenet")
    from openseg_r.vocab import load_vocabulary_file

    with pytest.raises(VocabularyError, match="not found"):
        load_vocabulary_file("/nonexistent/vocab.txt")
