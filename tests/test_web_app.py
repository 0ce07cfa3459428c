"""The web app's server side, without a browser (openseg_r.tools.web): what the page sends is checked
as an agent's call is and refused in one line; a live run follows the graph in a service slot,
answers the human self-check one question at a time, keeps to the time limit and the stop;
the backends a page may pick share the loaded model; downloads, the bare-name comparison, the
recorded runs' reports; and ``openseg-r serve web`` as a process (port in use, signals)."""

from __future__ import annotations

import html
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from loopback import free_port

pytest.importorskip("gradio")

from openseg_r import OpenSegR  # noqa: E402 (only with the web extra)
from openseg_r._support.render import format_share  # noqa: E402
from openseg_r.config.settings import Settings  # noqa: E402
from openseg_r.errors import ConfigError, OpenSegRError  # noqa: E402
from openseg_r.lmm.base import NoLMM  # noqa: E402
from openseg_r.lmm.scripted import ScriptedLMM  # noqa: E402
from openseg_r.prompts.templates import templates_for  # noqa: E402
from openseg_r.tools.safety import SafetyLimits, ToolInputError  # noqa: E402
from openseg_r.tools.service import SegmentationService  # noqa: E402
from openseg_r.tools.web import app as web_app  # noqa: E402
from openseg_r.tools.web.app import SELF_CHECK_MODES, WebApp, status_html  # noqa: E402
from openseg_r.tools.web.backends import MAX_TYPED_BACKENDS, NO_LMM, BackendChoices  # noqa: E402
from openseg_r.tools.web.compare import comparison_html  # noqa: E402
from openseg_r.tools.web.live import LiveRun, LiveRuns  # noqa: E402
from openseg_r.vocab import parse_class_list  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
VOCABULARY = "person, chair, sofa, bottle"
HUMAN_CHECK = {"enabled": True, "mode": "human", "margin_threshold": 0.5, "rounds": 1, "top_k": 2}
PLAIN = {"reasoning": False, "self_check": {"enabled": False}}


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def model(tiny_segmenter, tmp_path_factory):
    """The server's model: a scripted LMM, a runs database, the human self-check's settings
    as the CLI's --self-check-* flags set them, and a micro-batcher its siblings must share."""
    runs_db = tmp_path_factory.mktemp("web_runs") / "runs.sqlite"
    return OpenSegR(
        segmenter=tiny_segmenter,
        lmm=f"scripted:{SCRIPT}",
        runs_db=runs_db,
        batch_size=2,
        settings=Settings(reasoning=True, self_check=HUMAN_CHECK),
    )


@pytest.fixture
def uploads(tmp_path, monkeypatch) -> Path:
    """Gradio's upload folder, set before anything asks Gradio where it is."""
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def make_web(
    model: OpenSegR, downloads: Path, limits: SafetyLimits | None = None, listed=(), allow_any: bool = False
) -> WebApp:
    service = SegmentationService(model, limits or SafetyLimits())
    return WebApp(service, BackendChoices(model, list(listed), allow_any=allow_any), downloads)


@pytest.fixture
def web(model, uploads, tmp_path) -> WebApp:
    return make_web(model, tmp_path / "downloads")


def upload(folder: Path, data: bytes | None = None, name: str = "voc.jpg") -> dict:
    """The image component's raw value for a file Gradio received (by default examples/voc.jpg)."""
    target = folder / uuid.uuid4().hex / name
    target.parent.mkdir()
    if data is None:
        shutil.copy(PHOTO, target)
    else:
        target.write_bytes(data)
    return {"path": str(target), "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def refusal(
    web: WebApp,
    image: dict | None,
    classes: str = VOCABULARY,
    backend: str = "",
    reasoning: bool = False,
    self_check: str = "off",
) -> str:
    """``prepare``'s one-line refusal (the test fails if it is accepted or takes two lines)."""
    with pytest.raises(ToolInputError) as caught:
        web.prepare(image, classes, backend, reasoning, self_check, False)
    message = str(caught.value)
    assert message and "\n" not in message, message
    return message


def finish(steps) -> None:
    for _ in steps:
        pass


class GatedSegmenter:
    """The tiny segmenter, but ``segment`` can be held inside until released: a step made
    as long as a test needs, with no sleeping."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.hold = False
        self.calls = 0
        self.entered, self.release = threading.Event(), threading.Event()

    def query_bank(self, prompts):
        return self.inner.query_bank(prompts)

    def segment(self, rgb, bank, **options):
        self.calls += 1
        if self.hold:
            self.entered.set()
            assert self.release.wait(60), "never released"
        return self.inner.segment(rgb, bank, **options)

    def describe(self):
        return self.inner.describe()


@pytest.fixture
def gated(tiny_segmenter):
    gate = GatedSegmenter(tiny_segmenter)
    yield gate
    gate.release.set()  # a failed test must not leave a thread held


@pytest.fixture
def gated_model(gated):
    return OpenSegR(segmenter=gated, lmm="none", settings=Settings(reasoning=False))


def photo_rgb(service: SegmentationService) -> np.ndarray:
    return service.decode_image(PHOTO.read_bytes())


def run_rows(model: OpenSegR) -> dict[str, str]:
    return {record.run_id: record.status for record in model.runs_db.list_runs(1000)}


# --------------------------------------------------------------------------- 1. prepare: refusals and notes


@pytest.mark.parametrize("payload", [None, {}, {"path": ""}, {"path": None, "orig_name": "voc.jpg"}, "voc.jpg"])
def test_no_image_is_refused(web, payload):
    assert refusal(web, payload) == "upload an image first (or pick the example below it)"


def test_a_pasted_image_comes_as_a_data_url_and_is_checked_like_base64(web):
    import base64

    pasted = {"path": None, "url": "data:image/jpeg;base64," + base64.b64encode(PHOTO.read_bytes()).decode()}
    live, notes = web.prepare(pasted, VOCABULARY, "", False, "off", False)
    assert live.rgb.shape == (375, 500, 3) and live.image_name == "pasted image" and notes == []
    cut = base64.b64encode(PHOTO.read_bytes()[:20_000]).decode()
    truncated = {"path": None, "url": "data:image/jpeg;base64," + cut}
    assert refusal(web, truncated).startswith("image is corrupt or truncated")
    garbled = {"path": None, "url": "data:image/png;base64,!!!"}
    assert refusal(web, garbled) == "the pasted image is not valid base64"


@pytest.mark.parametrize("how", ["outside", "symlink", "dot-dot"])
def test_a_forged_path_outside_the_upload_folder_is_refused_without_reading_it(
    web, uploads, tmp_path, monkeypatch, how
):
    """A path the browser names must be one Gradio's upload folder holds; any other file (even a
    valid image, here one over the size limit, so that stat-ing it would show) is never opened."""
    outside = tmp_path / "secret" / "voc.jpg"
    outside.parent.mkdir()
    shutil.copy(PHOTO, outside)
    web.service.limits = SafetyLimits(max_file_bytes=100)
    if how == "symlink":
        (uploads / "link").mkdir()
        named = uploads / "link" / "voc.jpg"
        named.symlink_to(outside)
    elif how == "dot-dot":
        named = uploads / ".." / "secret" / "voc.jpg"
    else:
        named = outside
    touched = []
    real_read, real_stat = Path.read_bytes, Path.stat

    def read_bytes(path):
        touched.append(("read", os.path.realpath(path)))
        return real_read(path)

    def stat(path, **kwargs):
        touched.append(("stat", os.path.realpath(path)))
        return real_stat(path, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Path, "stat", stat)
    assert refusal(web, {"path": str(named), "orig_name": "voc.jpg"}) == "the uploaded file is gone; upload it again"
    assert not [what for what in touched if what[1] == os.path.realpath(outside)]


def test_etc_passwd_is_refused_like_a_missing_upload(web):
    assert refusal(web, {"path": "/etc/passwd", "orig_name": "voc.jpg"}) == "the uploaded file is gone; upload it again"


def test_a_vanished_upload_is_refused_in_one_line(web, uploads):
    payload = upload(uploads)
    Path(payload["path"]).unlink()
    assert refusal(web, payload) == "the uploaded file is gone; upload it again"


def test_a_file_over_the_size_limit_is_refused_with_both_sizes(model, uploads, tmp_path):
    web = make_web(model, tmp_path / "downloads", SafetyLimits(max_file_bytes=10_000))
    size = PHOTO.stat().st_size
    assert refusal(web, upload(uploads)) == f"the image file is {size:,} bytes, over the limit of 10,000"


@pytest.mark.parametrize(
    "data",
    [PHOTO.read_bytes()[:5000], bytes(np.random.default_rng(3).integers(0, 256, 4000, np.uint8))],
    ids=["truncated-jpeg", "random-bytes"],
)
def test_undecodable_bytes_get_the_message_the_mcp_tool_gives(web, uploads, data):
    with pytest.raises(ToolInputError) as tool:
        web.service.decode_image(data)
    message = refusal(web, upload(uploads, data))
    assert message == str(tool.value) and "the image" in message


@pytest.mark.parametrize("classes", ["", "   ", None])
def test_no_classes_is_refused(web, uploads, classes):
    assert refusal(web, upload(uploads), classes).startswith("name at least one class")


def test_too_many_classes_is_refused(model, uploads, tmp_path):
    web = make_web(model, tmp_path / "downloads", SafetyLimits(max_classes=3))
    assert refusal(web, upload(uploads), "cat, dog, cow, horse") == "the vocabulary has 4 classes, over the limit of 3"
    assert refusal(web, upload(uploads), "voc21") == "the vocabulary has 21 classes, over the limit of 3"


def test_a_vocabulary_over_the_text_budget_is_refused_with_its_cost(model, uploads, tmp_path):
    web = make_web(model, tmp_path / "downloads", SafetyLimits(max_text_sentences=20))
    templates = len(templates_for(model.settings.templates))
    cost = 3 * templates  # cat, dog, doggy
    assert cost > 20
    assert refusal(web, upload(uploads), "cat, dog|doggy") == (
        f"the vocabulary costs {cost:,} text sentences to encode (3 names and synonyms x {templates} templates), "
        "over the limit of 20; use fewer classes or synonyms"
    )


def test_a_backend_not_offered_is_refused_and_a_bad_typed_one_too(model, uploads, tmp_path):
    web = make_web(model, tmp_path / "downloads")
    spec = "openai:gpt@http://attacker.example/v1"
    assert refusal(web, upload(uploads), backend=spec) == (
        f"the LMM backend {spec!r} is not offered by this server; choose one of: {', '.join(web.backends.choices)}"
    )
    typing = make_web(model, tmp_path / "downloads", allow_any=True)
    message = refusal(typing, upload(uploads), backend="nonsense:thing")
    assert "nonsense" in message
    with pytest.raises(OpenSegRError) as direct:
        model.with_lmm("nonsense:thing")
    assert message == str(direct.value)


@pytest.mark.parametrize("mode", ["lmm", "sometimes", ""])
def test_a_self_check_mode_not_offered_is_refused(web, uploads, mode):
    assert mode not in SELF_CHECK_MODES
    assert refusal(web, upload(uploads), self_check=mode) == "the self-check is one of: off, LMM, human"


def test_ticking_reasoning_without_an_lmm_backend_is_a_note_and_reasoning_is_off(web, uploads):
    live, notes = web.prepare(upload(uploads), VOCABULARY, NO_LMM, True, "LMM", False)
    assert notes == ["no LMM backend chosen: reasoning is off", "no LMM backend chosen: the LMM self-check is off"]
    assert live.settings["reasoning"] is False and live.settings["self_check"]["enabled"] is False
    assert isinstance(live.model.lmm, NoLMM) and web.runs.get(live.id) is live
    with_lmm, notes = web.prepare(upload(uploads), VOCABULARY, "", True, "off", False)
    assert notes == [] and with_lmm.settings["reasoning"] is True and with_lmm.model is web.backends.model
    assert with_lmm.vocabulary.names == ["person", "chair", "sofa", "bottle"] and with_lmm.image_name == "voc.jpg"


# --------------------------------------------------------------------------- 2. live runs: the human self-check


def test_questions_answered_one_at_a_time_in_reverse_give_the_labels_of_answering_at_once(web, uploads, model):
    live, _ = web.prepare(upload(uploads), VOCABULARY, "", False, "human", False)
    assert live.settings == {"reasoning": False, "self_check": {"enabled": True, "mode": "human"}}
    finish(live.start())
    assert live.error is None and live.result is None and len(live.questions) == 2
    assert "data-state='paused'" in status_html(live)
    chosen = {q["region_id"]: q["choices"][1] for q in live.questions}  # the runner-up: labels change
    assert live.segmenter_labels() is not None
    events = []
    at_once = model.start(
        live.rgb,
        live.vocabulary,
        record=False,
        on_event=events.append,
        reasoning=False,
        self_check={"enabled": True, "mode": "human"},
    )
    assert sorted(q["region_id"] for q in at_once.questions) == sorted(chosen)
    for region in reversed([q["region_id"] for q in live.questions]):
        finish(live.answer(region, chosen[region], 1.0))
        assert live.error is None
    at_once.answer(
        {
            region: {"choice": choice, "confidence": 1.0, "reason": "answered in the browser"}
            for region, choice in chosen.items()
        }
    )
    assert live.result is not None and at_once.result is not None
    assert np.array_equal(live.result.labels, at_once.result.labels)
    assert not np.array_equal(live.result.labels, live.segmenter_labels())  # the answers did something
    assert {a.region_id: a.source for a in live.result.state.region_answers} == dict.fromkeys(chosen, "human")
    assert "data-state='done'" in status_html(live)
    page = live.trace.html()
    nodes = {event["node"] for event in events if event.get("event") == "node_start"}
    assert {"segmentation", "find_ambiguous_regions"} <= nodes
    for node in nodes:
        assert f'data-node="{node}"' in page, node


def test_an_answer_to_no_pending_question_or_not_a_choice_changes_nothing(web, uploads):
    live, _ = web.prepare(upload(uploads), VOCABULARY, "", False, "human", False)
    finish(live.start())
    before = live.questions
    region = before[0]["region_id"]
    finish(live.answer("r9.9", before[0]["choices"][0], 1.0))
    assert live.error == f"no pending question for region 'r9.9'; pending: {', '.join(q['region_id'] for q in before)}"
    assert live.questions == before and live.result is None
    finish(live.answer(region, "unicorn", 1.0))
    assert live.error == "'unicorn' is not one of this question's choices"
    assert live.questions == before and live.result is None
    finish(live.answer(region, before[0]["choices"][0], "not a number"))  # a bad confidence is taken as sure
    assert live.error is None and [q["region_id"] for q in live.questions] == [before[1]["region_id"]]


def test_a_second_step_while_one_runs_is_refused_and_the_first_still_finishes(gated, gated_model, tmp_path):
    service = SegmentationService(gated_model, SafetyLimits())
    live = LiveRun(service, gated_model, photo_rgb(service), parse_class_list(["cat", "sofa"]), dict(PLAIN))
    gated.hold = True
    first = live.start()
    next(first)  # the step has begun
    assert gated.entered.wait(60)
    finish(live.start())
    assert live.error == "this run is already working on a step; wait for it to finish"
    gated.release.set()
    finish(first)
    assert gated.calls == 1  # the refused step never ran
    assert live.result is not None and live.error is None, live.error  # the first step's outcome is what shows
    assert "data-state='done'" in status_html(live)


def test_an_answer_clicked_while_the_run_is_busy_waits_for_it_then_answers(gated, tiny_segmenter):
    """Two quick clicks: the second waits for the step in flight instead of being refused."""
    model = OpenSegR(segmenter=gated, lmm="none", settings=Settings(reasoning=False, self_check=HUMAN_CHECK))
    service = SegmentationService(model, SafetyLimits())
    live = LiveRun(service, model, photo_rgb(service), parse_class_list(VOCABULARY), {})
    gated.hold = True
    first = live.start()
    next(first)  # the step has begun and holds inside the segmenter
    assert gated.entered.wait(60)
    clicked = threading.Thread(target=finish, args=(live.answer("r1.1", "none of these", 1.0),))
    clicked.start()  # before the run has even paused: it waits for the step in flight
    gated.release.set()
    finish(first)
    clicked.join(60)
    assert not clicked.is_alive()
    assert live.error is None, live.error
    assert [q["region_id"] for q in live.questions] == ["r1.2"]  # r1.1 was answered after the wait
    finish(live.answer("r1.1", "none of these", 1.0))  # the same click again: no longer pending
    assert live.error == "no pending question for region 'r1.1'; pending: r1.2"


# --------------------------------------------------------------------------- 3. the time limit and the stop


def test_a_step_past_the_time_limit_ends_with_the_one_line_time_limit(gated, gated_model):
    service = SegmentationService(gated_model, SafetyLimits(call_timeout_s=0.2))
    live = LiveRun(service, gated_model, photo_rgb(service), parse_class_list(["cat", "sofa"]), dict(PLAIN))
    gated.hold = True
    try:
        finish(live.start())  # the segmenter holds until released: only the limit can end this step
        assert live.error == (
            "the segmentation took longer than the limit of 0.2 s and was abandoned; try a smaller "
            "image, a smaller vocabulary, or reasoning off"
        )
        assert live.result is None and "role='alert'" in status_html(live)
        finish(live.start())  # the abandoned work still runs: a retry must not run beside it
        assert live.error == "this run is already working on a step; wait for it to finish"
    finally:
        gated.release.set()
    assert service.wait_idle(60)
    gated.hold = False
    finish(live.start())  # once the abandoned work has ended, the run takes steps again
    assert live.error is None and live.result is not None


def test_stopping_the_service_ends_the_step_in_flight_and_refuses_the_next(gated, gated_model):
    service = SegmentationService(gated_model, SafetyLimits())
    live = LiveRun(service, gated_model, photo_rgb(service), parse_class_list(["cat", "sofa"]), dict(PLAIN))
    gated.hold = True
    steps = live.start()
    next(steps)
    assert gated.entered.wait(60)
    service.stop()
    gated.release.set()
    finish(steps)
    assert live.result is None and "the server is stopping" in live.error and "\n" not in live.error
    assert service.wait_idle(60)
    finish(live.start())
    assert live.error == "the server is stopping; no new segmentations are started"
    assert gated.calls == 1


# --------------------------------------------------------------------------- 4. the runs pages follow


def idle_run(service: SegmentationService) -> LiveRun:
    return LiveRun(service, service.model, np.zeros((8, 8, 3), np.uint8), parse_class_list(["cat"]), dict(PLAIN))


def test_live_runs_drop_the_oldest_beyond_their_capacity(gated_model):
    service = SegmentationService(gated_model)
    runs = LiveRuns(capacity=2)
    first, second, third = (runs.add(idle_run(service)) for _ in range(3))
    assert runs.get(second.id) is second and runs.get(third.id) is third
    with pytest.raises(ToolInputError, match="no longer kept") as caught:
        runs.get(first.id)
    assert "\n" not in str(caught.value)


def test_live_runs_drop_the_oldest_beyond_their_pixel_budget(gated_model):
    service = SegmentationService(gated_model)
    runs = LiveRuns(max_held_pixels=150)  # two 8x8 images fit, a third does not
    first, second, third = (runs.add(idle_run(service)) for _ in range(3))
    assert runs.get(second.id) is second and runs.get(third.id) is third
    with pytest.raises(ToolInputError, match="no longer kept"):
        runs.get(first.id)
    huge = runs.add(
        LiveRun(service, service.model, np.zeros((20, 20, 3), np.uint8), parse_class_list(["cat"]), dict(PLAIN))
    )
    assert runs.get(huge.id) is huge  # the newest run is kept even alone over the budget
    with pytest.raises(ToolInputError):
        runs.get(third.id)


def test_live_runs_forget_a_run_idle_too_long(gated_model):
    service = SegmentationService(gated_model)
    runs = LiveRuns(idle_s=60)
    stale, fresh = runs.add(idle_run(service)), runs.add(idle_run(service))
    stale.touched = time.monotonic() - 61
    with pytest.raises(ToolInputError) as caught:
        runs.get(stale.id)
    assert str(caught.value).startswith("this run is no longer kept by the server") and "\n" not in str(caught.value)
    assert runs.get(fresh.id) is fresh
    for missing in (None, "", "not-an-id"):
        with pytest.raises(ToolInputError, match="no longer kept"):
            runs.get(missing)


# --------------------------------------------------------------------------- 5. the backends a page may pick


def test_backends_offered_and_siblings_share_the_loaded_model(model, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"image_reasoning": {"description": "another backend"}}))
    listed = f"scripted:{other}"
    backends = BackendChoices(model, [listed, " " + listed])
    assert backends.choices == [f"scripted:{SCRIPT}", listed, NO_LMM] and backends.default == f"scripted:{SCRIPT}"
    assert backends.model_for("") is model and backends.model_for(None) is model
    sibling, bare = backends.model_for(listed), backends.model_for(NO_LMM)
    assert isinstance(bare.lmm, NoLMM) and isinstance(sibling.lmm, ScriptedLMM)
    assert len({id(model.lmm), id(sibling.lmm), id(bare.lmm)}) == 3
    assert sibling.options.lmm == listed and bare.options.lmm == NO_LMM and model.options.lmm == f"scripted:{SCRIPT}"
    assert model.batcher is not None
    for shared in ("segmenter", "batcher", "_lmm_slots", "_runs", "runs_db", "reasoning_cache"):
        assert getattr(sibling, shared) is getattr(model, shared) is getattr(bare, shared), shared


def test_a_run_of_a_sibling_is_counted_by_the_base_model(gated, gated_model):
    sibling = gated_model.with_lmm(None)
    gated.hold = True
    done = []
    worker = threading.Thread(
        target=lambda: done.append(sibling.segment(np.zeros((64, 64, 3), np.uint8), "cat, dog", **PLAIN)), daemon=True
    )
    worker.start()
    try:
        assert gated.entered.wait(60)
        assert gated_model.runs_in_flight() == 1 and sibling.runs_in_flight() == 1
    finally:
        gated.release.set()
    worker.join(60)
    assert done and gated_model.runs_in_flight() == 0 == sibling.runs_in_flight()


def test_a_bad_listed_backend_fails_when_the_server_starts(model):
    with pytest.raises(OpenSegRError) as caught:
        BackendChoices(model, [f"scripted:{SCRIPT}", "nonsense:thing"])
    assert "nonsense" in str(caught.value) and "\n" not in str(caught.value)


def test_typed_backends_are_capped(model, tmp_path):
    backends = BackendChoices(model, allow_any=True)
    specs = []
    for number in range(MAX_TYPED_BACKENDS + 1):
        script = tmp_path / f"script{number}.json"
        script.write_text("{}")
        specs.append(f"scripted:{script}")
    built = [backends.model_for(spec) for spec in specs]
    assert backends.model_for(specs[-1]) is built[-1]  # a kept one is reused
    assert backends.model_for(specs[1]) is built[1]
    assert backends.model_for(specs[0]) is not built[0]  # the oldest was dropped: built again
    assert len(backends._typed) == MAX_TYPED_BACKENDS
    assert backends.model_for(NO_LMM) is not None and backends.model_for("") is model  # offered ones stay


# --------------------------------------------------------------------------- 6. record=


def test_record_per_run(web, uploads, model):
    before = run_rows(model)
    kept_out, _ = web.prepare(upload(uploads), VOCABULARY, "", False, "off", False)
    finish(kept_out.start())
    assert kept_out.result is not None and kept_out.run_id is None and run_rows(model) == before
    recorded, _ = web.prepare(upload(uploads), VOCABULARY, "", True, "off", True)
    finish(recorded.start())
    assert recorded.error is None and recorded.result is not None
    rows = run_rows(model)
    assert set(rows) - set(before) == {recorded.run_id} and rows[recorded.run_id] == "done"
    assert f"recorded as {recorded.run_id[:12]}" in status_html(recorded)
    # recorded as `segment --record` records: the runs commands read it
    from openseg_r.cli.main import main

    assert main(["runs", "--runs-db", str(model.runs_db.path), "show", recorded.run_id]) == 0
    assert (
        main(
            [
                "runs",
                "--runs-db",
                str(model.runs_db.path),
                "report",
                recorded.run_id,
                "-o",
                str(uploads.parent / "report.html"),
            ]
        )
        == 0
    )
    assert recorded.run_id in (uploads.parent / "report.html").read_text()


def test_record_true_without_a_runs_database_is_an_error(tiny_segmenter, uploads, tmp_path):
    plain = OpenSegR(segmenter=tiny_segmenter, lmm="none")
    with pytest.raises(ConfigError, match="needs a runs database"):
        plain.start(np.zeros((32, 32, 3), np.uint8), "cat, dog", record=True, **PLAIN)
    web = make_web(plain, tmp_path / "downloads")  # the page's box is ignored where nothing is recorded
    live, _ = web.prepare(upload(uploads), "cat, dog", "", False, "off", True)
    assert live.record is False
    finish(live.start())
    assert live.result is not None and live.run_id is None


# --------------------------------------------------------------------------- 7. downloads


def test_downloads_are_the_result_files_and_coco_masks_pycocotools_reads(web, uploads):
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO

    live, _ = web.prepare(upload(uploads), VOCABULARY, "", True, "off", False)
    finish(live.start())
    assert web.finish(idle_run(web.service)) == []  # nothing to download before a result
    paths = [Path(p) for p in web.finish(live)]
    assert [p.name for p in paths] == [
        "labels.png",
        "overlay.png",
        "result.json",
        "masks_coco_rle.json",
        "panoptic.png",
        "panoptic.json",
        "panoptic_overlay.png",
    ]
    assert all(p.parent == web.downloads / live.id and p.stat().st_size > 0 for p in paths)
    assert json.loads(paths[2].read_text())["present_classes"] == live.result.present
    coco = COCO(str(paths[3]))
    result = live.result
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == result.names == live.vocabulary.names
    assert (
        coco.imgs[1]["file_name"] == "voc.jpg"
        and (coco.imgs[1]["height"], coco.imgs[1]["width"]) == result.labels.shape
    )
    annotations = coco.loadAnns(coco.getAnnIds())
    assert sorted(a["category_id"] - 1 for a in annotations) == sorted(
        int(v) for v in np.unique(result.labels) if 0 <= v < len(result.names)
    )
    for annotation in annotations:
        expected = result.labels == annotation["category_id"] - 1
        assert np.array_equal(coco_mask.decode(annotation["segmentation"]).astype(bool), expected)
        assert np.array_equal(coco.annToMask(annotation).astype(bool), expected)
        ys, xs = np.nonzero(expected)
        assert annotation["area"] == int(expected.sum())
        assert annotation["bbox"] == [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]


def test_only_the_newest_download_folders_are_kept(web, uploads, monkeypatch):
    monkeypatch.setattr(web_app, "KEPT_DOWNLOADS", 2)
    runs = []
    for age in (300, 200, 0):
        live, _ = web.prepare(upload(uploads), "cat, sofa", "", False, "off", False)
        finish(live.start())
        web.finish(live)
        then = time.time() - age
        os.utime(web.downloads / live.id, (then, then))  # written `age` seconds ago
        runs.append(live.id)
    web._prune()
    assert sorted(p.name for p in web.downloads.iterdir()) == sorted(runs[1:])


# --------------------------------------------------------------------------- 8. the bare-name comparison


def comparison_rows(page: str) -> dict[str, tuple[str, str]]:
    rows = re.findall(r"<tr data-class='([^']*)'><td>.*?</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    return {html.unescape(name): (run, base) for name, run, base in rows}


def test_comparison_shares_are_the_counted_pixels(rng):
    names = ["cat", "sofa", "lamp", "rug & <mat>"]
    run = rng.integers(-1, 2, (40, 50))  # lamp and the rug nowhere in the run; -1 is unknown
    base = rng.integers(0, 2, (40, 50))
    base[0, 0] = 3  # one pixel of the rug in the baseline
    page = comparison_html(names, run, base)
    expected = {}
    for index, name in enumerate(names):
        in_run, in_base = int((run == index).sum()), int((base == index).sum())
        if in_run or in_base:
            expected[name] = (
                format_share(in_run / run.size, present=in_run > 0),
                format_share(in_base / base.size, present=in_base > 0),
            )
    assert comparison_rows(page) == expected and "lamp" not in expected and "rug & <mat>" in expected
    changed = int((run != base).sum())
    assert f"differ on {format_share(changed / run.size, present=True)} of the pixels ({changed:,})" in page


def test_the_baseline_is_the_bare_name_segmentation(web, model):
    rgb = photo_rgb(web.service)
    vocabulary = parse_class_list(VOCABULARY.split(","))
    expected = model.segment(rgb, vocabulary, reasoning=False, self_check={"enabled": False}, record=False).labels
    assert np.array_equal(web.baseline(rgb, vocabulary), expected)
    with_reasoning = model.segment(rgb, vocabulary, self_check={"enabled": False}, record=False).labels
    assert not np.array_equal(with_reasoning, expected)  # so the comparison can tell them apart


def test_recorded_labels_of_a_run_and_the_refusals(web, uploads, model, tiny_segmenter):
    live, _ = web.prepare(upload(uploads), VOCABULARY, "", True, "off", True)
    finish(live.start())
    rgb, vocabulary, labels = web.recorded_labels(live.run_id)
    assert np.array_equal(labels, live.result.labels) and np.array_equal(rgb, live.rgb)
    assert vocabulary.names == live.vocabulary.names
    assert live.run_id in dict((value, label) for label, value in web.recorded_choices())
    redacting = OpenSegR(segmenter=tiny_segmenter, lmm="none", runs_db=model.runs_db, redact=True)
    redacted = redacting.segment(live.rgb, "cat, dog", **PLAIN).run_id
    assert redacted in run_rows(model)
    for bad in (redacted, "", None, "../../etc/passwd", live.run_id.upper(), uuid.uuid4().hex):
        with pytest.raises(OpenSegRError) as caught:
            web.recorded_labels(bad)
        assert "\n" not in str(caught.value), bad
    with pytest.raises(ToolInputError, match="recorded with --redact"):
        web.recorded_labels(redacted)
    with pytest.raises(ToolInputError, match="choose a recorded run first"):
        web.recorded_labels("nothex")


# --------------------------------------------------------------------------- 9. the report route


def test_the_report_route_and_the_page(web, uploads):
    from fastapi.testclient import TestClient

    from openseg_r.tools.web.server import create_app

    live, _ = web.prepare(upload(uploads), VOCABULARY, "", True, "off", True)
    finish(live.start())
    with TestClient(create_app(web)) as client:
        report = client.get(f"/openseg/report/{live.run_id}")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert live.run_id in report.text
        short = live.run_id[:12]  # what the status line shows: "recorded as <short>"
        assert short in web_app.status_html(live)
        by_short = client.get(f"/openseg/report/{short}")
        assert by_short.status_code == 200 and live.run_id in by_short.text
        assert by_short.text.rsplit(" by openseg-r", 1)[0][:-40] == report.text.rsplit(" by openseg-r", 1)[0][:-40]
        for bad, line in (
            ("not-hex", "not a run id"),
            ("A" * 32, "not a run id"),
            ("abc", "not a run id"),
            (uuid.uuid4().hex, None),
            (uuid.uuid4().hex[:12], None),
        ):
            answer = client.get(f"/openseg/report/{bad}")
            assert answer.status_code == 404 and answer.text.count("\n") == 1, answer.text
            assert line is None or answer.text == line + "\n"
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()


def test_gradio_refuses_uploads_over_twice_the_file_limit_and_takes_smaller_ones(tiny_segmenter, uploads, tmp_path):
    """Uploads between the limit and twice it reach openseg-r's own one-line refusal (tested
    above); Gradio's upload route refuses bigger ones before they are stored."""
    from fastapi.testclient import TestClient

    from openseg_r.tools.web.server import UPLOAD_HEADROOM, create_app

    limits = SafetyLimits(max_file_bytes=10_000)
    web = make_web(OpenSegR(segmenter=tiny_segmenter, lmm="none"), tmp_path / "downloads", limits)
    with TestClient(create_app(web)) as client:
        small = client.post("/gradio_api/upload", files={"files": ("a.jpg", b"x" * 15_000, "image/jpeg")})
        big = client.post(
            "/gradio_api/upload", files={"files": ("b.jpg", b"x" * (UPLOAD_HEADROOM * 10_000 + 1), "image/jpeg")}
        )
    assert small.status_code == 200 and Path(small.json()[0]).is_relative_to(uploads.resolve())
    assert big.status_code == 413, big.text


def test_the_runs_pages_follow_are_bounded_as_the_readme_says():
    runs = LiveRuns()
    assert (runs.capacity, runs.idle_s, runs.max_held_pixels) == (32, 3600.0, 200_000_000)
    assert web_app.KEPT_DOWNLOADS == 64


def test_the_report_route_on_a_server_that_records_nothing(tiny_segmenter, uploads, tmp_path):
    from fastapi.testclient import TestClient

    from openseg_r.tools.web.server import create_app

    web = make_web(OpenSegR(segmenter=tiny_segmenter, lmm="none"), tmp_path / "downloads")
    with TestClient(create_app(web)) as client:
        answer = client.get(f"/openseg/report/{uuid.uuid4().hex}")
    assert answer.status_code == 404 and answer.text == "this server does not record runs\n"


# --------------------------------------------------------------------------- 10. openseg-r serve web


def serve_web_args(tiny_model_files, *extra) -> list[str]:
    config, weights = tiny_model_files
    return [
        "serve",
        "web",
        "--clip-model",
        str(config),
        "--clip-pretrained",
        str(weights),
        "--lmm",
        "none",
        "--cache",
        "none",
        "--text-cache",
        "none",
        *map(str, extra),
    ]


def test_serve_web_on_a_port_in_use_fails_in_one_line_before_the_model_loads(
    tiny_model_files, uploads, monkeypatch, capsys
):
    from openseg_r.cli.main import main

    loads = []
    monkeypatch.setattr(OpenSegR, "from_options", lambda *args, **kwargs: loads.append(args))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(serve_web_args(tiny_model_files, "--port", port)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"openseg-r: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert loads == []


def test_serve_web_beyond_this_machine_warns_first(tiny_model_files, uploads, monkeypatch, capsys):
    from openseg_r.cli.main import main

    monkeypatch.setattr(OpenSegR, "from_options", lambda *args, **kwargs: pytest.fail("the model loaded"))
    with socket.socket() as taken:  # the port is taken, so nothing is served
        taken.bind(("127.0.0.2", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(serve_web_args(tiny_model_files, "--host", "127.0.0.2", "--port", port)) == 2
    assert capsys.readouterr().err.splitlines() == [
        "warning: serving on 127.0.0.2: other machines can reach this page",
        f"openseg-r: error: cannot listen on 127.0.0.2:{port}: Address already in use",
    ]


def test_serve_web_with_a_bad_listed_backend_fails_in_one_line(tiny_model_files, uploads, capsys):
    from openseg_r.cli.main import main

    assert main(serve_web_args(tiny_model_files, "--port", free_port(), "--lmm-choice", "nonsense:thing")) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("openseg-r: error: unknown LMM backend 'nonsense'"), lines


def test_serve_web_stops_on_sigterm_with_0_and_one_line(tiny_model_files, uploads, tmp_path, monkeypatch, capsys):
    """The command in this process (signals reach the main thread, which runs it): ready, the page
    served, then SIGTERM ends it with 0 and "openseg-r: stopped". The stop's watchdog would end
    the process: its os._exit is caught here."""
    import tempfile
    import urllib.request

    from openseg_r.cli.main import main
    from openseg_r.tools import lifecycle
    from openseg_r.tools.web.server import GRADIO_QUIET

    for name in GRADIO_QUIET:
        monkeypatch.setenv(name, "False" if "GRADIO" in name else "1")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the downloads folder
    exits, exited = [], threading.Event()
    monkeypatch.setattr(lifecycle, "EXIT_GRACE_S", 0.1)
    monkeypatch.setattr(lifecycle.os, "_exit", lambda code: (exits.append(code), exited.set()))
    port, served = free_port(), []

    downloads = []

    def stop_once_served() -> None:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as page:  # loopback only
                    served.append(page.status)
                    break
            except OSError:
                threading.Event().wait(0.2)
        downloads.extend(tmp_path.glob("openseg-r-web-*"))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_served, daemon=True).start()
    assert main(serve_web_args(tiny_model_files, "--port", port)) == 0
    assert served == [200]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"openseg-r web page ready on http://127.0.0.1:{port}/"), lines
    assert lines[1] == "openseg-r: stopped"
    assert len(downloads) == 1 and not downloads[0].exists()  # the downloads folder, deleted when it stopped
    assert exited.wait(60) and exits == [0]  # before the real os._exit is back


def test_serve_web_stops_on_sigint_with_130_and_one_line(tiny_model_files, tmp_path):
    """As a process: it says it is ready, serves the page, and after SIGINT exits 130 with one last line."""
    import urllib.request

    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
        LANGSMITH_TRACING="false",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
        TMPDIR=str(tmp_path),
    )
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        env[name] = str(tmp_path / name.lower())
    command = [sys.executable, "-m", "openseg_r.cli", *serve_web_args(tiny_model_files, "--port", port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        ready = lines.get(timeout=300)
        assert ready is not None and ready.startswith(
            f"openseg-r web page ready on http://127.0.0.1:{port}/ (model loaded in "
        ), ready
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as page:  # loopback only
            assert page.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130
        rest = []
        while (line := lines.get(timeout=60)) is not None:
            rest.append(line)
        assert rest == ["openseg-r: interrupted"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_page_ships_the_repository_example_photo():
    """The example under the page's image is the README's photo, shipped inside the package."""
    shipped = web_app.EXAMPLES / "voc.jpg"
    assert shipped.read_bytes() == PHOTO.read_bytes()


def test_the_cli_guides_serve_web_usage_names_only_flags_it_takes():
    import argparse

    from openseg_r.cli.main import build_parser

    readme = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    usage = readme.split("openseg-r serve web [", 1)[1].split("(see Web app)", 1)[0]
    named = set(re.findall(r"(--[a-z][a-z-]*[a-z])", usage)) - {"--self-check", "--root", "--allow-urls"}
    serve = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    web = next(a for a in serve._actions if isinstance(a, argparse._SubParsersAction)).choices["web"]
    flags = {flag for action in web._actions for flag in action.option_strings}
    assert named and named <= flags, named - flags
    assert not {"--root", "--allow-urls"} & flags  # the page uploads its images
    assert not {"--self-check", "--self-check-mode", "--no-reasoning"} & flags  # the page chooses them per run
