"""The parser on arbitrary text: it never raises anything but its own documented error."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openseg_r.lmm.parsing import StructuredOutputError, parse_structured
from openseg_r.lmm.upstream import parse_free_text
from openseg_r.schemas import CandidateReasons, CandidateSearch, ClassReasoning, ImageReasoning

UPSTREAM = Path(__file__).resolve().parent / "data" / "pc59_class_reason.json"
SCHEMAS = [ClassReasoning, ImageReasoning, CandidateSearch, CandidateReasons]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
KEYS = st.sampled_from(
    ["name", "attributes", "general_category", "sub_category", "description", "candidates", "present"]
)
near_schema = st.dictionaries(KEYS, json_values, max_size=6)


def _only_documented_error(text, schema, subject=None):
    try:
        value = parse_structured(text, schema, subject)
    except StructuredOutputError:
        return None
    assert isinstance(value, schema)
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=400), schema=st.sampled_from(SCHEMAS), subject=st.none() | st.text(max_size=20))
def test_arbitrary_text(text, schema, subject):
    _only_documented_error(text, schema, subject)


@settings(max_examples=300, deadline=None)
@given(value=near_schema, schema=st.sampled_from(SCHEMAS), prose=st.text(max_size=40), fence=st.booleans())
def test_json_shaped_answers_in_prose_and_fences(value, schema, prose, fence):
    body = json.dumps(value)
    text = f"{prose}\n```json\n{body}\n```" if fence else f"{prose} {body} {prose}"
    parsed = _only_documented_error(text, schema)
    if parsed is not None and isinstance(parsed, ClassReasoning):
        assert len(parsed.attributes) <= 10 and all(len(a) <= 120 for a in parsed.attributes)


@settings(max_examples=200, deadline=None)
@given(
    general=st.text(
        alphabet=st.characters(blacklist_characters="[]\n", blacklist_categories=("Cs",)), min_size=1, max_size=20
    ),
    attributes=st.lists(st.text(alphabet="abcdefgh ijk-", min_size=1, max_size=15), min_size=1, max_size=8),
)
def test_upstream_free_text_round_trip(general, attributes):
    text = (
        f"A1: This object belongs to [{general}].\nA2: This '{general}' is [thing].\n"
        f"A3: It can be recognized as cat because it contains visual attributes: [{', '.join(attributes)}]."
    )
    value = _only_documented_error(text, ClassReasoning, "cat")
    expected = [a.strip() for a in attributes if a.strip()]
    if expected:
        assert value is not None and value.attributes == list(dict.fromkeys(" ".join(a.split()) for a in expected))[:10]


def test_pathological_inputs():
    for text in ["[" * 5000, "{" * 5000 + "}" * 5000, '{"name": ' + "1" * 5000 + "}", "{" * 100_000, "\x00\ud800"]:
        _only_documented_error(text, ClassReasoning, "x")


def test_the_real_upstream_answers_parse_to_their_published_fields():
    data = json.loads(UPSTREAM.read_text())
    for name, entry in data.items():
        value = parse_structured(entry["raw_response"], ClassReasoning, name)
        assert value.attributes == entry["class_des"][:10], name
        assert value.general_category == entry["general_category"], name
        assert value.sub_category == entry["sub_category"], name
        assert parse_free_text(entry["raw_response"])["name"] == name
