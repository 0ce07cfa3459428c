"""Structured answers: parsing, bounded re-asks, and stated fallbacks."""

from __future__ import annotations

import pytest

from openseg_r.errors import ConfigError
from openseg_r.lmm import LMMRequest, NoLMM, ScriptedLMM, backend_from_spec, parse_structured
from openseg_r.lmm.parsing import StructuredOutputError
from openseg_r.schemas import ClassReasoning, ImageReasoning

GOOD = '{"name": "cat", "general_category": "animal", "sub_category": "pet", "attributes": ["whiskers", "fur"]}'


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"```json\n{GOOD}\n```",
        f"Sure! Here it is:\n{GOOD}\nHope this helps.",
        f"[{GOOD}]",
    ],
)
def test_json_is_found_in_fences_and_prose(text):
    value = parse_structured(text, ClassReasoning)
    assert value.attributes == ["whiskers", "fur"]


def test_partial_and_extra_keys():
    value = parse_structured('{"name": "cat", "colour": "grey", "attributes": "whiskers, fur,  "}', ClassReasoning)
    assert value.general_category == "" and value.attributes == ["whiskers", "fur"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "empty"),
        ("no json here", "no JSON"),
        ('{"attributes": ["x"]}', "name"),
        ("[1, 2]", "JSON list"),
        ('{"name": "cat", "attributes": 7}', "attributes"),
    ],
)
def test_bad_answers_say_why(text, message):
    with pytest.raises(StructuredOutputError, match=message):
        parse_structured(text, ClassReasoning)


def test_hostile_values_are_bounded():
    value = parse_structured(
        '{"name": "' + "x" * 5000 + '", "attributes": ' + str(["a"] * 50).replace("'", '"') + "}", ClassReasoning
    )
    assert len(value.name) <= 120 and len(value.attributes) <= 10
    image = ImageReasoning.model_validate({"description": None, "candidates": None})
    assert image.candidates == []


def request(step="generic_reasoning", subject="cat"):
    return LMMRequest(step=step, subject=subject, prompt="p", prompt_version="v", schema=ClassReasoning)


def test_reask_then_success_is_recorded():
    lmm = ScriptedLMM({"image_reasoning": ["garbage", GOOD]})
    reply = lmm.ask(request("image_reasoning", None))
    assert reply.value is not None and [c.ok for c in reply.calls] == [False, True]
    assert "no JSON" in reply.calls[0].error


def test_reasks_are_bounded_and_end_in_none():
    lmm = ScriptedLMM({"generic_reasoning": {"cat": "still not json"}}, max_attempts=3)
    reply = lmm.ask(request())
    assert reply.value is None and len(reply.calls) == 3 and "no JSON" in reply.error


def test_backend_exceptions_become_errors_not_crashes():
    reply = NoLMM().ask(request())
    assert reply.value is None and "no LMM backend" in reply.error


def test_specs(tmp_path):
    assert isinstance(backend_from_spec("none"), NoLMM)
    script = tmp_path / "s.json"
    script.write_text('{"generic_reasoning": {}}')
    assert isinstance(backend_from_spec(f"scripted:{script}"), ScriptedLMM)
    with pytest.raises(ConfigError, match="unknown LMM backend"):
        backend_from_spec("magic:thing")
    with pytest.raises(ConfigError, match="not found"):
        backend_from_spec(f"scripted:{tmp_path / 'missing.json'}")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        backend_from_spec(f"scripted:{tmp_path / 'bad.json'}")
