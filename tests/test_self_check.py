"""The self-check loop: ambiguity detection, region questions, applying answers, rounds,
budgets, the human interrupt, and the trace. The segmenter's output is injected
(a known label map with known doubt), so that the right answer is known."""

from __future__ import annotations

import json
import re
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from openseg_r import OpenSegR, build_graph
from openseg_r._support.store import ArtifactStore
from openseg_r.config.settings import SelfCheckSettings, Settings
from openseg_r.errors import ConfigError
from openseg_r.graph.state import OpenSegState
from openseg_r.lmm import ScriptedLMM
from openseg_r.lmm.base import BaseLMMBackend
from openseg_r.nodes.context import OpenSegContext
from openseg_r.nodes.regions import (
    OUTLINE_COLOUR,
    crop_box,
    locate_ambiguous_regions,
    marked_crop,
)
from openseg_r.schemas import UNKNOWN_LABEL, ImageRef, RegionVerdict, Usage
from openseg_r.segmenters.base import SegmentationArrays
from openseg_r.vocab import parse_class_list

NAMES = ["wall", "sofa", "armchair", "floor"]
H, W = 96, 128
# The segmenter is sure of everything except two boxes, where sofa and armchair compete.
WRONG_BOX = (60, 30, 110, 70)  # x0, y0, x1, y1: truly an armchair, segmented as sofa
RIGHT_BOX = (4, 74, 40, 94)  # truly a sofa, segmented as sofa (armchair runner-up)


def synthetic_case():
    """(arrays, truth): a confident wall/floor scene with two ambiguous sofa-vs-armchair boxes."""
    truth = np.zeros((H, W), np.int32)
    truth[H // 2 :] = 3
    labels = truth.copy()
    confidence = np.full((H, W), 0.9, np.float32)
    runner_up = np.where(labels == 0, 3, 0).astype(np.int32)
    runner_up_confidence = np.full((H, W), 0.05, np.float32)
    for (x0, y0, x1, y1), true_class in ((WRONG_BOX, 2), (RIGHT_BOX, 1)):
        truth[y0:y1, x0:x1] = true_class
        labels[y0:y1, x0:x1] = 1
        runner_up[y0:y1, x0:x1] = 2
        confidence[y0:y1, x0:x1] = 0.45
        runner_up_confidence[y0:y1, x0:x1] = 0.40
    arrays = SegmentationArrays(
        labels=labels,
        confidence=confidence,
        runner_up=runner_up,
        margin=confidence - runner_up_confidence,
        runner_up_confidence=runner_up_confidence,
    )
    return arrays, truth


def hash_embeddings(names):
    """Text embeddings for the aligner: a fixed random unit vector per name (unrelated names
    are far apart)."""
    rows = [np.random.default_rng(zlib.crc32(n.encode())).standard_normal(64) for n in names]
    return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=-1)


class InjectedSegmenter:
    """Stands in for CLIPSegmenter: returns the given arrays whatever the image."""

    def __init__(self, arrays: SegmentationArrays) -> None:
        self.arrays = arrays

    def query_bank(self, prompts):
        return None

    def embed_names(self, names):
        return hash_embeddings(names)

    def describe(self):
        return {"segmenter": "injected arrays"}

    def segment(self, rgb, bank, **kwargs):
        a = self.arrays
        return SegmentationArrays(
            a.labels.copy(), a.confidence.copy(), a.runner_up.copy(), a.margin.copy(), a.runner_up_confidence.copy()
        )


class TruthLMM(BaseLMMBackend):
    """Knows the true label map: answers the majority true class inside the region's box,
    which the question states in image coordinates."""

    name = model_id = "truth"

    def __init__(self, truth: np.ndarray, names: list[str], confidence: float = 0.9) -> None:
        self.truth, self.names, self.confidence = truth, names, confidence
        self.requests = []

    def complete(self, request, feedback=None):
        self.requests.append(request)
        x0, x1, y0, y1 = map(int, re.search(r"x (\d+)-(\d+), y (\d+)-(\d+)", request.prompt).groups())
        majority = np.bincount(self.truth[y0:y1, x0:x1].ravel()).argmax()
        answer = {"choice": self.names[majority], "confidence": self.confidence, "reason": "I can see it"}
        return json.dumps(answer), Usage(prompt_tokens=10, completion_tokens=5)


def run_graph(lmm, self_check: dict | None = None, arrays=None, names=NAMES, graph=None, config=None, **context):
    arrays = arrays if arrays is not None else synthetic_case()[0]
    store = ArtifactStore()
    rgb = np.random.default_rng(0).integers(0, 255, (*arrays.labels.shape, 3), dtype=np.uint8)
    image = ImageRef(key=store.put(rgb), width=rgb.shape[1], height=rgb.shape[0])
    settings = Settings(reasoning=False, self_check={"enabled": True, **(self_check or {})})
    state = OpenSegState(image=image, vocabulary=parse_class_list(", ".join(names)), settings=settings)
    ctx = OpenSegContext(segmenter=InjectedSegmenter(arrays), lmm=lmm, store=store, **context)
    graph = graph or build_graph()
    output = graph.invoke(state, config=config or {}, context=ctx)
    return output, store


def final_labels(output, store):
    state = OpenSegState.model_validate({k: v for k, v in output.items() if not k.startswith("__")})
    chosen = state.self_check.output if state.self_check else state.segmentation
    return state, store.get(chosen.labels_key)


def region_mask(box):
    mask = np.zeros((H, W), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


# --------------------------------------------------------------------------- detection


def test_detection_finds_the_two_contested_boxes_ranked_by_area_times_doubt():
    arrays, _ = synthetic_case()
    view = arrays
    regions = locate_ambiguous_regions(view, SelfCheckSettings(enabled=True))
    assert [r.box for r in regions] == [WRONG_BOX, RIGHT_BOX]  # 50x40 before 36x20
    wrong = regions[0]
    assert wrong.area == 50 * 40 and not wrong.at_border
    assert [c for c, _, _ in wrong.competing] == [1, 2]  # sofa (0.45) before armchair (0.40)
    assert wrong.competing[0][1] == pytest.approx(0.45) and wrong.competing[1][1] == pytest.approx(0.40)
    assert wrong.competing[0][2] == 1.0 and wrong.competing[1][2] == 0.0  # top-1 shares
    assert wrong.score == pytest.approx(2000 * 0.95)
    # asked pixels are never part of a new region; small regions are ignored
    unasked = locate_ambiguous_regions(view, SelfCheckSettings(), asked=region_mask(WRONG_BOX))
    assert [r.box for r in unasked] == [RIGHT_BOX]
    assert [r.box for r in locate_ambiguous_regions(view, SelfCheckSettings(min_area_pixels=721))] == [WRONG_BOX]
    assert locate_ambiguous_regions(view, SelfCheckSettings(margin_threshold=0.04)) == []


def test_detection_splits_a_blob_by_the_pair_of_classes_that_compete():
    labels = np.zeros((40, 40), np.int32)
    runner_up = np.ones((40, 40), np.int32)
    runner_up[:, 20:] = 2  # left half: 0 vs 1; right half: 0 vs 2; one connected blob of doubt
    probs = np.full((40, 40), 0.4, np.float32)
    view = SegmentationArrays(
        labels, probs, runner_up, margin=np.full((40, 40), 0.05, np.float32), runner_up_confidence=probs - 0.05
    )
    regions = locate_ambiguous_regions(view, SelfCheckSettings(min_area_pixels=10))
    assert sorted((r.box, tuple(c for c, _, _ in r.competing)) for r in regions) == [
        ((0, 0, 20, 40), (0, 1)),
        ((20, 0, 40, 40), (0, 2)),
    ]
    assert all(r.at_border for r in regions)


def test_one_class_has_no_runner_up_and_so_nothing_is_ambiguous():
    labels = np.zeros((32, 32), np.int32)
    view = SegmentationArrays(
        labels,
        np.ones((32, 32), np.float32),
        np.full((32, 32), -1, np.int32),
        margin=np.ones((32, 32), np.float32),
        runner_up_confidence=np.zeros((32, 32), np.float32),
    )
    assert locate_ambiguous_regions(view, SelfCheckSettings(margin_threshold=1.0)) == []


# --------------------------------------------------------------------------- crops


@pytest.mark.parametrize(
    "box, image, expected",
    [
        ((40, 40, 60, 50), (200, 100), (25, 20, 75, 70)),  # half the box on each side, then to at least 50
        ((0, 0, 10, 10), (200, 100), (0, 0, 50, 50)),  # at the corner: shifted inside, still min size
        ((190, 90, 200, 100), (200, 100), (150, 50, 200, 100)),  # far corner
        ((2, 2, 8, 8), (20, 30), (0, 0, 20, 30)),  # image smaller than the minimum crop: the whole image
    ],
)
def test_crop_box_keeps_context_and_stays_inside_the_image(box, image, expected):
    assert crop_box(box, *image, context=0.5, min_side=50) == expected


def test_marked_crop_outlines_the_region_and_is_large_enough_to_see():
    rgb = np.full((H, W, 3), 200, np.uint8)
    mask = region_mask(WRONG_BOX)
    crop = marked_crop(rgb, mask, (40, 20, 120, 80))  # 80x60, enlarged to a 224 long side
    assert crop.shape == (168, 224, 3)
    magenta = np.all(crop == OUTLINE_COLOUR, axis=-1)
    assert magenta.any()
    ys, xs = np.nonzero(magenta)  # the outline follows the region's border: (20..70)-(10..50) in the crop
    scale = 224 / 80
    assert xs.min() == pytest.approx(20 * scale, abs=3) and xs.max() == pytest.approx(70 * scale, abs=3)
    assert ys.min() == pytest.approx(10 * scale, abs=3) and ys.max() == pytest.approx(50 * scale, abs=3)
    assert crop[2, 2].max() < 200  # outside the region is darkened
    assert tuple(crop[int(30 * scale), int(45 * scale)]) == (200, 200, 200)  # inside untouched


# --------------------------------------------------------------------------- the loop in the graph


def test_a_truthful_lmm_fixes_exactly_the_wrong_region_and_nothing_else():
    arrays, truth = synthetic_case()
    lmm = TruthLMM(truth, NAMES)
    output, store = run_graph(lmm)
    state, labels = final_labels(output, store)
    assert np.array_equal(labels, truth)
    changed = labels != arrays.labels
    assert np.array_equal(changed, region_mask(WRONG_BOX))  # nothing outside it changed
    check = state.self_check
    assert [c.action for c in check.changes] == ["relabel", "relabel"]
    assert check.changes[0].from_classes == {"sofa": 2000} and check.changes[0].to_class == "armchair"
    assert check.changes[1].pixels_changed == 0  # the right answer for the other box changes nothing
    assert check.stopped == "nothing ambiguous left" and check.round == 1
    assert len(lmm.requests) == 2 and all(len(r.images) == 1 for r in lmm.requests)
    # the report is computed on the corrected map
    areas = {c.name: c.pixels for c in state.report.classes}
    assert areas["armchair"] == 2000
    nodes = [t.node for t in state.timings]
    assert nodes == [
        "prompt_composition",
        "segmentation",
        "find_ambiguous_regions",
        "check_region",
        "check_region",
        "apply_decisions",
        "find_ambiguous_regions",
        "finalize",
    ]


def test_each_region_is_asked_once_over_rounds_and_rounds_are_bounded():
    arrays, truth = synthetic_case()
    lmm = TruthLMM(truth, NAMES)
    output, store = run_graph(lmm, {"top_k": 1, "rounds": 2})
    state, labels = final_labels(output, store)
    check = state.self_check
    assert [[r.box for r in rnd.regions] for rnd in check.rounds] == [[WRONG_BOX], [RIGHT_BOX]]
    assert check.rounds[0].left_over_k == 1 and check.stopped == "nothing ambiguous left"
    assert np.array_equal(labels, truth)
    output, store = run_graph(TruthLMM(truth, NAMES), {"top_k": 1, "rounds": 1})
    state, _ = final_labels(output, store)
    assert state.self_check.stopped == "round limit (1) reached; 1 ambiguous region(s) left unasked"


@pytest.mark.parametrize("self_check", [{"top_k": 0}, {"rounds": 0}])
def test_k_or_r_zero_is_bit_identical_to_no_self_check(self_check):
    arrays, truth = synthetic_case()
    lmm = TruthLMM(truth, NAMES)
    output, store = run_graph(lmm, self_check)
    state, labels = final_labels(output, store)
    baseline, base_store = run_graph(lmm, {"enabled": False})
    base_state, base_labels = final_labels(baseline, base_store)
    assert labels.tobytes() == base_labels.tobytes() == arrays.labels.tobytes()
    assert state.report == base_state.report and state.self_check is None and lmm.requests == []


@pytest.mark.parametrize(
    "answer, settings, expected_action, expected_verdict",
    [
        ({"choice": "wall", "confidence": 0.99}, {}, "unchanged", "rejected"),  # a class that does not compete
        ({"choice": "a dragon", "confidence": 0.99}, {}, "unchanged", "rejected"),  # not a class at all
        ({"choice": "armchair", "confidence": 0.3}, {}, "unchanged", "class"),  # not confident enough
        ({"choice": "none of these", "confidence": 0.9}, {}, "unchanged", "none_of_these"),  # policy: keep
        ({"choice": "Neither", "confidence": 0.9}, {"none_policy": "unknown"}, "unknown", "none_of_these"),
        ("", {}, "unchanged", "no_answer"),  # empty
        ("<html>500 Internal Server Error</html>", {}, "unchanged", "no_answer"),  # garbage
        ({"choice": "armchair", "confidence": "high"}, {}, "unchanged", "no_answer"),  # invalid confidence
        ({"choice": "ARMCHAIRS", "confidence": "90%"}, {}, "relabel", "class"),  # normalised, percent
    ],
)
def test_answers_follow_the_stated_policy(answer, settings, expected_action, expected_verdict):
    arrays, _ = synthetic_case()
    lmm = ScriptedLMM({"self_check": {"r1.1": answer, "*": {"choice": "sofa", "confidence": 0.9}}})
    output, store = run_graph(lmm, settings)
    state, labels = final_labels(output, store)
    first = state.self_check.changes[0]
    answer_record = next(a for a in state.region_answers if a.region_id == "r1.1")
    assert first.region_id == "r1.1" and first.action == expected_action
    assert answer_record.verdict == expected_verdict
    inside = region_mask(WRONG_BOX)
    if expected_action == "unchanged":
        assert np.array_equal(labels, arrays.labels)
    elif expected_action == "unknown":
        assert np.all(labels[inside] == UNKNOWN_LABEL) and np.array_equal(labels[~inside], arrays.labels[~inside])
        assert state.report.unknown_pixels == 2000
    else:
        assert np.all(labels[inside] == 2) and np.array_equal(labels[~inside], arrays.labels[~inside])
    if expected_verdict == "no_answer":
        assert answer_record.lmm_calls == 2  # asked, then re-asked once with the validation error
        assert any(f.step == "self_check" and f.subject == "r1.1" for f in state.fallbacks)


def test_a_name_outside_the_competing_set_is_aligned_by_embeddings():
    vectors = {"sofa": [1.0, 0, 0], "armchair": [0, 1.0, 0], "club chair": [0.1, 0.99, 0]}

    def aligner(names):
        return torch.nn.functional.normalize(torch.tensor([vectors.get(n, [0, 0, 1.0]) for n in names]), dim=-1)

    lmm = ScriptedLMM({"self_check": {"r1.1": {"choice": "club chair", "confidence": 0.8}, "*": "no"}})
    output, store = run_graph(lmm, aligner=aligner)
    state, labels = final_labels(output, store)
    answer = next(a for a in state.region_answers if a.region_id == "r1.1")
    assert answer.verdict == "class" and answer.choice == "armchair"
    assert answer.alignment.method == "embedding" and answer.alignment.score > 0.85
    assert np.all(labels[region_mask(WRONG_BOX)] == 2)


def test_reweight_changes_only_pixels_where_the_boosted_class_wins():
    arrays, _ = synthetic_case()
    x0, y0, x1, y1 = WRONG_BOX
    arrays.runner_up_confidence[y0:y1, x0 : x0 + 10] = 0.2  # 0.2 x 2 < 0.45: stays sofa
    arrays.margin = arrays.confidence - arrays.runner_up_confidence
    lmm = ScriptedLMM({"self_check": {"r1.1": {"choice": "armchair", "confidence": 0.9}, "*": "none"}})
    output, store = run_graph(lmm, {"apply": "reweight", "margin_threshold": 0.3}, arrays=arrays)
    state, labels = final_labels(output, store)
    inside = region_mask(WRONG_BOX)
    assert np.all(labels[y0:y1, x0 + 10 : x1] == 2) and np.all(labels[y0:y1, x0 : x0 + 10] == 1)
    assert np.array_equal(labels[~inside], arrays.labels[~inside])
    assert state.self_check.changes[0].pixels_changed == 40 * 40


def test_the_call_budget_stops_mid_round_and_says_so():
    arrays, _ = synthetic_case()
    lmm = ScriptedLMM({"self_check": "garbage, never valid"})  # every answer is re-asked while budget allows
    output, store = run_graph(lmm, {"max_calls": 1, "top_k": 2, "rounds": 3})
    state, labels = final_labels(output, store)
    check = state.self_check
    assert len(lmm.requests) == 1 and check.calls_used == 1  # one call, no re-ask: the budget allowed one
    assert check.rounds[0].left_over_budget == 1 and check.budget_exhausted
    assert check.stopped.startswith("LMM call budget (1) used up")
    assert np.array_equal(labels, arrays.labels)


def test_budget_split_never_exceeds_the_budget():
    from openseg_r.nodes.self_check import split_budget

    for remaining in range(1, 12):
        for regions in range(1, remaining + 1):
            shares = split_budget(remaining, regions, max_attempts=2)
            assert len(shares) == regions and sum(shares) <= remaining and min(shares) >= 1


def test_region_questions_run_in_parallel_within_the_concurrency_bound():
    arrays, truth = synthetic_case()
    for box in ((4, 4, 30, 24), (90, 76, 124, 92)):  # two more contested boxes: four in all
        x0, y0, x1, y1 = box
        arrays.labels[y0:y1, x0:x1], arrays.runner_up[y0:y1, x0:x1] = 1, 2
        arrays.confidence[y0:y1, x0:x1], arrays.runner_up_confidence[y0:y1, x0:x1] = 0.45, 0.4
    arrays.margin = arrays.confidence - arrays.runner_up_confidence

    class SlowLMM(TruthLMM):
        in_flight = peak = 0
        lock = threading.Lock()

        def complete(self, request, feedback=None):
            with self.lock:
                SlowLMM.in_flight += 1
                SlowLMM.peak = max(SlowLMM.peak, SlowLMM.in_flight)
            time.sleep(0.3)
            with self.lock:
                SlowLMM.in_flight -= 1
            return super().complete(request, feedback)

    lmm = SlowLMM(truth, NAMES)
    output, _ = run_graph(lmm, {"top_k": 4}, arrays=arrays, max_concurrent_lmm_calls=2)
    assert len(lmm.requests) == 4 and SlowLMM.peak == 2


def test_full_image_option_sends_the_whole_image_too():
    arrays, truth = synthetic_case()
    lmm = TruthLMM(truth, NAMES)
    output, store = run_graph(lmm, {"full_image": True})
    assert all(len(r.images) == 2 for r in lmm.requests)
    assert lmm.requests[0].images[1].shape[:2] == (H, W)
    state, _ = final_labels(output, store)
    assert all(a.context_key for a in state.region_answers)


def test_region_at_the_border_of_a_tiny_image_is_cropped_inside_it():
    labels = np.zeros((24, 20), np.int32)
    runner_up = np.ones((24, 20), np.int32)
    probs = np.full((24, 20), 0.5, np.float32)
    arrays = SegmentationArrays(labels, probs, runner_up, np.zeros((24, 20), np.float32), probs.copy())
    lmm = ScriptedLMM({"self_check": {"choice": "sofa", "confidence": 1}})
    output, store = run_graph(lmm, {"min_area_pixels": 16}, arrays=arrays, names=["wall", "sofa"])
    state, labels_after = final_labels(output, store)
    region = state.self_check.rounds[0].regions[0]
    assert region.at_border and region.box == (0, 0, 20, 24)
    crop = store.get(state.region_answers[0].crop_key)
    assert crop.shape == (224, 187, 3)  # the whole 20x24 image, enlarged
    assert np.all(labels_after == 1)


# --------------------------------------------------------------------------- human mode


def test_human_mode_pauses_resumes_with_command_and_completes():
    arrays, truth = synthetic_case()
    graph = build_graph(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    lmm = TruthLMM(truth, NAMES)
    output, store = run_graph(lmm, {"mode": "human"}, graph=graph, config=config)
    questions = {i.value["region_id"]: i for i in output["__interrupt__"]}
    assert sorted(questions) == ["r1.1", "r1.2"] and lmm.requests == []
    first = questions["r1.1"].value
    assert first["choices"] == ["sofa", "armchair", "none of these"] and first["box"] == list(WRONG_BOX)
    assert store.get(first["crop_key"]).ndim == 3
    resumed = graph.invoke(
        Command(resume={questions["r1.1"].id: "armchair", questions["r1.2"].id: {"choice": "sofa", "reason": "sure"}}),
        config=config,
        context=OpenSegContext(segmenter=InjectedSegmenter(arrays), lmm=lmm, store=store),
    )
    assert "__interrupt__" not in resumed
    state, labels = final_labels(resumed, store)
    assert np.array_equal(labels, truth)
    assert [a.source for a in state.region_answers] == ["human", "human"]


def test_facade_human_mode_with_a_callback_and_step_by_step(tiny_segmenter, voc):
    seg = OpenSegR(segmenter=tiny_segmenter)
    settings = {
        "reasoning": False,
        "self_check": {"enabled": True, "mode": "human", "margin_threshold": 0.5, "rounds": 1, "top_k": 2},
    }
    with pytest.raises(ConfigError, match="human mode"):
        seg.segment(voc["rgb"], "person, chair, sofa, bottle", **settings)
    seen = []

    def on_question(question, crop):
        seen.append((question["region_id"], crop.shape))
        return question["choices"][1]  # the runner-up

    result = seg.segment(voc["rgb"], "person, chair, sofa, bottle", on_question=on_question, **settings)
    assert len(seen) == 2 and all(shape[2] == 3 for _, shape in seen)
    assert result.state.self_check.changes and result.segmenter_labels is not None
    run = seg.start(voc["rgb"], "person, chair, sofa, bottle", **settings)
    assert run.result is None and len(run.questions) == 2
    with pytest.raises(ConfigError, match="no pending question"):
        run.answer({"r9.9": "sofa"})
    run.answer({run.questions[0]["region_id"]: "none of these"})
    assert run.result is None and len(run.questions) == 1
    run.answer({run.questions[0]["region_id"]: "none of these"})
    assert run.result is not None
    assert {a.verdict for a in run.result.state.region_answers} == {"none_of_these"}


# --------------------------------------------------------------------------- real segmenter, trace, files


def test_real_segmenter_trace_and_files(tiny_segmenter, voc, tmp_path):
    lmm = ScriptedLMM({"self_check": {"choice": "sofa", "confidence": 0.9, "reason": "cushions"}})
    seg = OpenSegR(segmenter=tiny_segmenter, lmm=lmm)
    vocabulary = "person, chair, sofa, bottle"
    plain = seg.segment(voc["rgb"], vocabulary, reasoning=False)
    result = seg.segment(
        voc["rgb"],
        vocabulary,
        reasoning=False,
        self_check={"enabled": True, "margin_threshold": 0.5, "none_policy": "unknown"},
    )
    check = result.state.self_check
    assert check.calls_used == len(lmm.requests) <= 8
    assert np.array_equal(result.segmenter_labels, plain.labels)
    changed = result.labels != plain.labels
    assert changed.sum() == sum(c.pixels_changed for c in check.changes)
    assert np.all(result.labels[changed] == result.names.index("sofa"))
    paths = result.save(tmp_path)
    saved = json.loads(paths["result"].read_text())
    trace = saved["self_check"]
    assert trace["lmm_calls"] == check.calls_used and trace["stopped"] == check.stopped
    for answer in trace["answers"]:
        assert (tmp_path / answer["crop_file"]).is_file() and answer["question"].startswith("The image is a crop")
    assert sum(c["pixels_changed"] for c in trace["changes"]) == int(changed.sum())
    assert saved["lmm_usage"]["calls"] == len(lmm.requests)


def test_one_class_vocabulary_asks_nothing(tiny_segmenter, voc):
    lmm = ScriptedLMM({"self_check": {"choice": "person", "confidence": 1}})
    result = OpenSegR(segmenter=tiny_segmenter, lmm=lmm).segment(
        voc["rgb"], "person", reasoning=False, self_check={"enabled": True, "margin_threshold": 1.0}
    )
    assert result.state.self_check.stopped == "no ambiguous region found" and lmm.requests == []


@pytest.mark.parametrize(
    "value, expected",
    [(0.7, 0.7), ("0.7", 0.7), ("70%", 0.7), (85, 0.85), (1, 1.0), (0, 0.0)],
)
def test_verdict_confidence_accepts_common_forms(value, expected):
    assert RegionVerdict(choice="sofa", confidence=value).confidence == pytest.approx(expected)


@pytest.mark.parametrize("value", ["high", -0.1, 250, True, None])
def test_verdict_confidence_rejects_the_rest(value):
    with pytest.raises(ValueError):
        RegionVerdict(choice="sofa", confidence=value)


def test_questions_carry_the_reasoning_already_held(tiny_segmenter, voc):
    from pathlib import Path

    script = json.loads((Path(__file__).resolve().parents[1] / "examples" / "voc_reasoning.json").read_text())
    script["self_check"] = {"choice": "none of these", "confidence": 0.9}
    lmm = ScriptedLMM(script)
    result = OpenSegR(segmenter=tiny_segmenter, lmm=lmm).segment(
        voc["rgb"], "voc21", class_filter="none", self_check={"enabled": True, "margin_threshold": 0.5}
    )
    regions = [r for rnd in result.state.self_check.rounds for r in rnd.regions]
    assert regions
    image_attributes = result.state.alignment.image_attributes
    for region in regions:
        for evidence in region.competing:
            generic = result.state.generic_reasoning.get(evidence.name)  # none for the background class
            held = image_attributes.get(evidence.name) or (generic.attributes if generic else [])
            assert evidence.attributes == held
    questions = [r.prompt for r in lmm.requests if r.step == "self_check"]
    assert questions and all("segmenter probability" in q and "quoted data" in q for q in questions)
    assert np.array_equal(result.labels, result.segmenter_labels)  # "none of these" kept everything
