"""The web app's live trace panel and result legend (openseg_r.tools.web.trace), fed the events of real runs
of the graph (tiny random CLIP, scripted LMM) and, for the in-between states, events written by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openseg_r import OpenSegR
from openseg_r._support.render import class_colors, format_share
from openseg_r.lmm import ScriptedLMM
from openseg_r.runs.events import to_json
from openseg_r.tools.web.trace import MAX_SHOWN_ITEMS, MAX_TIMELINE, TRACE_CSS, LiveTrace, result_html

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "voc_reasoning.json"
VOCABULARY = "person, chair, diningtable, bottle"
SELF_CHECK = {"enabled": True, "margin_threshold": 0.5, "rounds": 2, "top_k": 2}
REASONING_SECTIONS = ("image_reasoning", "generic", "alignment")


class Run:
    """One real run: its events as the graph sent them, and its result."""

    def __init__(self, segmenter, rgb, script: dict, vocabulary: str = VOCABULARY, **settings) -> None:
        self.lmm = ScriptedLMM(script)
        self.events: list[dict] = []
        self.result = OpenSegR(segmenter=segmenter, lmm=self.lmm).segment(
            rgb, vocabulary, on_event=self.events.append, **settings
        )

    def trace(self) -> LiveTrace:
        trace = LiveTrace()
        for event in self.events:
            trace.add(event)
        return trace


@pytest.fixture(scope="module")
def full_run(tiny_segmenter, voc):
    """Reasoning and two self-check rounds."""
    script = json.loads(EXAMPLE.read_text())
    script["self_check"] = {"choice": "chair", "confidence": 0.9, "reason": "red cushioned seat"}
    return Run(tiny_segmenter, voc["rgb"], script, self_check=SELF_CHECK)


def timeline(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<li class="node" data-node="([^"]+)" data-status="([^"]+)"', page)


def sections(page: str) -> list[str]:
    return re.findall(r'<section data-section="([^"]+)"', page)


def section(page: str, name: str) -> str:
    match = re.search(rf'<section data-section="{name}">(.*?)</section>', page, re.S)
    assert match, f"no {name} section"
    return match.group(1)


# --------------------------------------------------------------------------- real runs


def test_every_node_of_a_real_run_appears_in_order_and_ends_done(full_run):
    nodes = timeline(full_run.trace().html())
    started = [e["node"] for e in full_run.events if e["event"] == "node_start"]
    assert [node for node, _ in nodes] == started
    assert {status for _, status in nodes} == {"done"}
    names = [node for node, _ in nodes]
    assert set(names[:2]) == {"generic_reasoning", "image_reasoning"}
    assert names[2:5] == ["class_alignment", "prompt_composition", "segmentation"]
    assert names[5] == "find_ambiguous_regions" and names[-1] == "finalize"
    asked = {answer.region_id for answer in full_run.result.state.region_answers}
    assert asked and names.count("check_region") == len(asked)
    assert names.count("find_ambiguous_regions") == full_run.result.state.self_check.round + 1


def test_the_reasoning_alignment_and_prompts_of_a_real_run_are_shown(full_run):
    page = full_run.trace().html()
    assert sections(page) == ["timeline", "image_reasoning", "generic", "alignment", "prompts", "self_check", "usage"]
    state = full_run.result.state
    assert state.image_reasoning.description in section(page, "image_reasoning")
    assert "red cushioned seat" in section(page, "image_reasoning")  # an image attribute of "chairs"
    generic = section(page, "generic")
    assert "furniture → seating" in generic and "plates and cutlery on top" in generic
    alignment = section(page, "alignment")
    for raw, matched in (("dining table", "diningtable"), ("chairs", "chair")):
        decision = next(d for d in state.alignment.decisions if d.raw == raw)
        assert decision.matched == matched
        assert f"<td>{raw}</td><td>{matched}</td><td>{decision.method}</td>" in alignment
    assert "person that has man in a plaid shirt and brown hat" in section(page, "prompts")


def test_self_check_answers_and_lmm_usage_of_a_real_run_are_shown(full_run):
    page = full_run.trace().html()
    state = full_run.result.state
    answers = section(page, "self_check")
    for answer in state.region_answers:
        assert f"<td>{answer.region_id}</td><td>{answer.verdict}</td>" in answers
    assert "<td>lmm</td>" in answers
    prompt_tokens = sum(c.usage.prompt_tokens for c in state.lmm_calls)
    completion_tokens = sum(c.usage.completion_tokens for c in state.lmm_calls)
    assert len(state.lmm_calls) == len(full_run.lmm.requests) > 0
    assert f"{len(state.lmm_calls)} LMM call(s)" in section(page, "usage")
    assert f"{prompt_tokens} prompt + {completion_tokens} completion tokens" in section(page, "usage")


def test_events_as_json_render_exactly_like_events_with_models(full_run):
    as_json = LiveTrace()
    for event in full_run.events:
        as_json.add(json.loads(json.dumps(to_json(event))))  # what a --trace-jsonl file holds
    assert as_json.html() == full_run.trace().html()


def test_result_legend_rows_match_the_present_classes_and_their_shares(full_run):
    result = full_run.result
    page = result_html(result)
    rows = re.findall(
        r'<tr data-class="([^"]+)"><td><span class="openseg-swatch" style="background:#(\w{6})">'
        r"</span></td><td>[^<]*</td><td>([^<]+)</td><td>([^<]+)</td></tr>",
        page,
    )
    assert [name for name, *_ in rows] == result.present and result.present
    colours = class_colors(len(result.names))
    for name, colour, share, confidence in rows:
        summary = next(c for c in result.classes if c.name == name)
        assert colour == "".join(f"{int(v):02x}" for v in colours[summary.index])
        assert share == format_share(summary.pixels / result.labels.size, present=True)
        assert confidence == f"{summary.mean_confidence:.2f}"
    assert f"{len(result.state.lmm_calls)} LMM call(s)" in page
    assert f"{sum(t.seconds for t in result.state.timings):.2f} s" in page


def test_the_usage_line_counts_answers_the_reasoning_cache_gave(tiny_segmenter, voc):
    model = OpenSegR(segmenter=tiny_segmenter, lmm=ScriptedLMM(json.loads(EXAMPLE.read_text())))
    first = model.segment(voc["rgb"], VOCABULARY)
    assert "from the reasoning cache" not in result_html(first)  # everything was asked
    second = model.segment(voc["rgb"], VOCABULARY)  # the generic reasoning is cached now
    hits = second.reasoning_cache["hits"]
    assert hits > 0 and f"({hits} answer(s) from the reasoning cache)" in result_html(second)


def test_a_run_without_reasoning_shows_no_reasoning_sections(tiny_segmenter, voc):
    run = Run(tiny_segmenter, voc["rgb"], {}, reasoning=False)
    page = run.trace().html()
    assert not set(REASONING_SECTIONS) & set(sections(page))
    assert "prompts" in sections(page)
    assert [node for node, _ in timeline(page)] == ["prompt_composition", "segmentation", "finalize"]


def test_a_run_that_waits_for_a_person_shows_the_questions_then_resumes_into_the_same_steps(tiny_segmenter, voc):
    trace = LiveTrace()
    settings = {
        "reasoning": False,
        "self_check": {"enabled": True, "mode": "human", "margin_threshold": 0.5, "rounds": 1, "top_k": 2},
    }
    run = OpenSegR(segmenter=tiny_segmenter).start(
        voc["rgb"], "person, chair, sofa, bottle", on_event=trace.add, **settings
    )
    assert len(run.questions) == 2
    assert trace.status_line() == "waiting for your answers: 2 question(s)"
    assert trace.running() == ["check_region", "check_region"]
    waiting = [node for node, status in timeline(trace.html()) if status == "waiting"]
    assert waiting == ["check_region", "check_region"]  # shown as waiting for a person, not spinning
    run.answer({question["region_id"]: "none of these" for question in run.questions})
    assert run.result is not None and trace.running() == []
    nodes = timeline(trace.html())
    assert [node for node, _ in nodes].count("check_region") == 2 and {status for _, status in nodes} == {"done"}
    answers = section(trace.html(), "self_check")
    for question in run.result.state.region_answers:
        assert f"<td>{question.region_id}</td><td>none_of_these</td>" in answers and "<td>human</td>" in answers


def test_hostile_lmm_answers_are_escaped(tiny_segmenter, voc):
    script = {
        "generic_reasoning": {
            name: {
                "name": name,
                "general_category": "<b onmouseover=x>thing</b>",
                "attributes": ["<script>alert(1)</script>"],
            }
            for name in ("person", "chair")
        },
        "image_reasoning": {
            "description": "<img src=x onerror=alert(1)>",
            "candidates": [
                {"name": 'chair"><script>alert(2)</script>', "attributes": ["<iframe src=javascript:alert(3)>"]}
            ],
        },
    }
    run = Run(tiny_segmenter, voc["rgb"], script, vocabulary="person, chair")
    page = run.trace().html() + result_html(run.result)
    for hostile in ("<script", "<img", "<iframe", "<b onmouseover", 'chair"><script'):
        assert hostile not in page
    for escaped in (
        "&lt;img src=x onerror=alert(1)&gt;",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "chair&quot;&gt;&lt;script&gt;alert(2)",
        "&lt;b onmouseover=x&gt;",
    ):
        assert escaped in page


# --------------------------------------------------------------------------- events by hand


def test_a_node_is_running_between_its_start_and_its_end():
    trace = LiveTrace()
    assert trace.running() == [] and trace.status_line() == "starting"
    trace.add({"event": "node_start", "node": "segmentation", "input": {}})
    assert trace.running() == ["segmentation"] and trace.status_line() == "segmentation"
    page = trace.html()
    assert '<li class="node" data-node="segmentation" data-status="running"><span class="openseg-spinner">' in page
    trace.add({"event": "update", "node": "segmentation", "keys": ["segmentation"]})
    assert trace.running() == ["segmentation"]
    trace.add({"event": "node_end", "node": "segmentation", "seconds": 1.25, "output": {}})
    assert trace.running() == [] and timeline(trace.html()) == [("segmentation", "done")]
    assert "1.25 s" in trace.html()


def test_generic_reasoning_progress_shows_a_bar_and_a_count():
    trace = LiveTrace()
    trace.add({"event": "node_start", "node": "generic_reasoning", "input": {}})
    trace.add({"event": "progress", "node": "generic_reasoning", "done": 3, "total": 20})
    assert '<progress value="3" max="20"></progress> 3/20' in trace.html()
    assert trace.status_line() == "generic_reasoning 3/20"
    trace.add({"event": "node_end", "node": "generic_reasoning", "seconds": 2.0, "output": {}})
    assert "<progress" not in trace.html()


def test_parallel_region_checks_end_in_any_order():
    trace = LiveTrace()
    for region in ("r1.1", "r1.2"):
        trace.add({"event": "node_start", "node": "check_region", "input": {"region": {"id": region}}})
    assert trace.running() == ["check_region", "check_region"] and trace.status_line() == "check_region ×2"
    answer = {
        "region_id": "r1.2",
        "round": 1,
        "source": "lmm",
        "question": "?",
        "crop_key": "k",
        "verdict": "class",
        "choice": "sofa",
        "confidence": 0.8,
    }
    trace.add({"event": "node_end", "node": "check_region", "seconds": 0.5, "output": {"region_answers": [answer]}})
    states = re.findall(r'data-status="(\w+)">.*?check_region <span class="openseg-muted">(r1\.\d)', trace.html())
    assert states == [("running", "r1.1"), ("done", "r1.2")]
    assert "<td>r1.2</td><td>class</td><td>sofa</td><td>0.80</td><td>lmm</td>" in section(trace.html(), "self_check")


def test_an_interrupt_says_how_many_questions_wait_until_the_run_goes_on():
    trace = LiveTrace()
    trace.add({"event": "interrupt", "questions": [{"region_id": "r1.1"}, {"region_id": "r1.2"}]})
    assert trace.status_line() == "waiting for your answers: 2 question(s)"
    assert "waiting for your answers: 2 question(s)" in trace.html()
    trace.add({"event": "node_start", "node": "apply_decisions", "input": {}})
    assert "waiting" not in trace.html() and trace.status_line() == "apply_decisions"


def test_hostile_text_in_every_section_is_escaped_and_clipped():
    evil = "<script>alert(1)</script>"
    trace = LiveTrace()
    trace.add({"event": "node_start", "node": evil, "input": {"region": {"id": evil}}})
    trace.add(
        {
            "event": "node_end",
            "node": "class_alignment",
            "seconds": 0.1,
            "output": {
                "alignment": {"present": [evil], "decisions": [{"raw": evil, "matched": None, "method": "dropped"}]},
                "fallbacks": [{"step": evil, "subject": evil, "reason": evil * 100, "used": evil}],
            },
        }
    )
    trace.add(
        {
            "event": "node_end",
            "node": "check_region",
            "seconds": 0.1,
            "output": {
                "region_answers": [
                    {
                        "region_id": evil,
                        "round": 1,
                        "source": "human",
                        "question": evil,
                        "crop_key": "k",
                        "verdict": "none_of_these",
                        "raw_choice": evil,
                        "reason": evil,
                    }
                ]
            },
        }
    )
    page = trace.html()
    assert "<script" not in page and page.count("&lt;script&gt;") >= 8
    longest = max(len(cell) for cell in re.findall(r">([^<]*)<", page))
    assert longest < 400 * len("&lt;")  # a 2,500-character reason is clipped to about 300


def test_long_lists_are_capped_with_a_count_of_the_rest():
    generic = {f"class{i}": {"name": f"class{i}", "attributes": ["a"]} for i in range(MAX_SHOWN_ITEMS + 30)}
    prompts = {
        "templates": "vild",
        "score_order": "max_then_softmax",
        "classes": [
            {
                "name": "cat",
                "queries": ["cat", "kitty", "kitten"],
                "slots": ["fur", "whiskers", "tail"],
                "source": "generic",
            }
        ],
    }
    trace = LiveTrace()
    trace.add({"event": "node_end", "node": "generic_reasoning", "output": {"generic_reasoning": generic}})
    trace.add({"event": "node_end", "node": "prompt_composition", "output": {"prompts": prompts}})
    page = trace.html()
    assert section(page, "generic").count("<tr>") == 1 + MAX_SHOWN_ITEMS + 1 and "… 30 more" in page
    phrases = section(page, "prompts")
    assert "cat that has fur" in phrases and "kitten that has tail" not in phrases and "… 3 more" in phrases


def test_a_long_timeline_folds_its_oldest_finished_steps_and_keeps_the_running_ones():
    trace = LiveTrace()
    trace.add({"event": "node_start", "node": "check_region", "input": {"region": {"id": "r1.1"}}})
    for _ in range(MAX_TIMELINE + 10):
        trace.add({"event": "node_start", "node": "apply_decisions", "input": {}})
        trace.add({"event": "node_end", "node": "apply_decisions", "seconds": 0.0, "output": {}})
    page = trace.html()
    assert "… 11 earlier steps" in page and len(timeline(page)) == MAX_TIMELINE
    assert timeline(page)[0] == ("check_region", "running")


def test_malformed_events_and_outputs_change_nothing_and_never_raise():
    trace = LiveTrace()
    empty = trace.html()
    for event in (
        None,
        "text",
        {},
        {"event": "progress", "done": "x"},
        {"event": "interrupt", "questions": 3},
        {"event": "node_end", "node": "prompt_composition", "output": {"prompts": {"classes": 7}}},
    ):
        trace.add(event)
    assert "prompts" not in sections(trace.html())
    assert trace.html() != empty  # the node_end itself is on the timeline
    assert "@keyframes" in TRACE_CSS and "url(" not in TRACE_CSS


def test_the_trace_and_the_legend_give_one_usage_line_with_failures_and_cache_answers(tiny_segmenter, voc):
    """Calls that failed and answers the cache gave are counted the same way in both places."""
    lmm = ScriptedLMM(json.loads(EXAMPLE.read_text()))
    model = OpenSegR(segmenter=tiny_segmenter, lmm=lmm)
    model.segment(voc["rgb"], "person, chair, bottle")  # caches these classes' generic reasoning
    lmm.script["image_reasoning"] = "this is not the JSON asked for"  # the same model id: the cache still answers
    events: list[dict] = []
    result = model.segment(voc["rgb"], VOCABULARY, on_event=events.append, allow_fallback=True)
    failed = sum(1 for call in result.state.lmm_calls if not call.ok)
    hits = result.reasoning_cache["hits"]
    assert failed > 0 and hits > 0
    trace = LiveTrace()
    for event in events:
        trace.add(event)
    expected = f"{len(result.state.lmm_calls)} LMM call(s) ({failed} failed, {hits} answer(s) from the reasoning cache)"
    assert expected in section(trace.html(cache=result.reasoning_cache), "usage")
    assert expected in result_html(result)
