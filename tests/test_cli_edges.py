"""The command line at its edges, as a user meets them in a shell: a bad ``--out`` before
the model loads, a closed pipe, a misspelt flag, an LMM server that drips its reply (the
timeout is a deadline; Ctrl-C leaves at once), and the small messages that used to be
wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_calls import call
from loopback import DrippingOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def cli(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
    )


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("openseg-r: error: ") and "Traceback" not in stderr, stderr
    return lines[0].removeprefix("openseg-r: error: ")


# --------------------------------------------------------------------------- --out, checked first


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    return path


@pytest.mark.parametrize("where", ["an existing file", "under a file", "under /proc"])
def test_a_bad_out_is_one_line_and_exit_2_before_any_model_loads(where, a_file, tmp_path, capsys, monkeypatch):
    out = {"an existing file": a_file, "under a file": a_file / "out", "under /proc": Path("/proc/openseg-r-test/out")}[
        where
    ]
    loaded = []
    monkeypatch.setattr("openseg_r.model.OpenSegR.from_options", lambda *a, **k: loaded.append(1))
    code = call("segment", PHOTO, "--vocab", "voc21", "--clip-pretrained", "none", "--out", out)
    assert code == 2 and not loaded
    message = one_error_line(capsys.readouterr().err)
    assert message.startswith(f"--out {out}")
    assert a_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_out_check_leaves_nothing_behind(tmp_path):
    from openseg_r._support.files import check_output_folder

    check_output_folder(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


def test_eval_checks_its_out_first_too(a_file, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "labels" / "a.png")
    (root / "classes.txt").write_text("cat\nsofa\n")
    assert call("eval", "--dataset", "folder", "--root", root, "--out", a_file, "--clip-pretrained", "none") == 2
    assert one_error_line(capsys.readouterr().err) == f"--out {a_file} is a file; give a folder"


# --------------------------------------------------------------------------- pipes and flags


@pytest.mark.parametrize("command", [["vocabularies"], ["graph", "--mermaid"], ["runs", "list"]])
def test_a_closed_pipe_ends_quietly_as_a_unix_tool(command, tmp_path):
    """``openseg-r vocabularies | true``: the reader is gone before anything is written."""
    runs_db = tmp_path / "runs.sqlite"
    args = ["runs", "--runs-db", str(runs_db), "list", "--limit", "2000"] if command[0] == "runs" else command
    if command[0] == "runs":  # a database with enough runs to fill a pipe
        from openseg_r.runs import RunsDB

        with RunsDB(runs_db) as db:
            for number in range(2000):
                db.start_run(f"{number:032x}", image=f"image-{number}.jpg", vocabulary="voc21")
    line = " ".join(f"'{a}'" for a in [sys.executable, "-m", "openseg_r.cli", *args])
    shell = subprocess.run(
        ["bash", "-c", f'{line} | (exec 0<&-; sleep 0.1); echo "status ${{PIPESTATUS[0]}}"'],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert shell.stderr == "", shell.stderr
    assert shell.stdout.strip() in ("status 141", "status 0"), shell.stdout  # 0: all was written before it closed


def test_a_closed_pipe_mid_output_is_exit_141_and_no_traceback(tmp_path):
    runs_db = tmp_path / "runs.sqlite"
    from openseg_r.runs import RunsDB

    with RunsDB(runs_db) as db:
        for number in range(3000):
            db.start_run(f"{number:032x}", image=f"image-{number}.jpg", vocabulary="voc21")
    line = " ".join(
        f"'{a}'"
        for a in [sys.executable, "-m", "openseg_r.cli", "runs", "--runs-db", runs_db, "list", "--limit", "3000"]
    )
    shell = subprocess.run(
        ["bash", "-c", f'{line} | head -1 >/dev/null; echo "status ${{PIPESTATUS[0]}}"'],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert shell.stderr == "" and shell.stdout.strip() == "status 141", (shell.stdout, shell.stderr)


def test_a_misspelt_flag_is_named_before_the_required_one_it_hides(capsys, tmp_path):
    assert call("segment", PHOTO, "--vocabb", "voc21", "--out", tmp_path / "out") == 2
    assert one_error_line(capsys.readouterr().err) == "unrecognized arguments: --vocabb (did you mean --vocab?)"
    assert call("segment", PHOTO, "--out", tmp_path / "out") == 2  # no typo: argparse's own message
    assert "one of the arguments --classes --vocab is required" in capsys.readouterr().err


# --------------------------------------------------------------------------- a server that drips its reply


@pytest.fixture
def drip():
    server = DrippingOpenAIServer()
    yield server
    server.close()


def test_a_dripping_lmm_ends_the_run_at_its_timeout_with_exit_4(drip, tiny_model_files, tmp_path):
    config, weights = tiny_model_files
    started = time.monotonic()
    proc = cli(
        "segment",
        PHOTO,
        "--classes",
        "cat, dog, person",
        "--lmm",
        f"openai:drip@{drip.url}",
        "--lmm-option",
        "timeout=5",
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
        "--out",
        tmp_path / "out",
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 4, proc.stderr
    assert "timed out: no complete answer within the 5 s timeout" in proc.stderr
    assert elapsed < 45, elapsed  # model load + one 5 s deadline, not minutes
    assert not (tmp_path / "out").exists()


def test_with_allow_fallback_a_dripping_lmm_is_a_recorded_fallback(drip, tiny_model_files, tmp_path):
    config, weights = tiny_model_files
    proc = cli(
        "segment",
        PHOTO,
        "--classes",
        "cat, dog",
        "--lmm",
        f"openai:drip@{drip.url}",
        "--lmm-option",
        "timeout=3",
        "--allow-fallback",
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
        "--out",
        tmp_path / "out",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert any("timed out" in (f.get("reason") or "") for f in result["fallbacks"]), result["fallbacks"]


def test_ctrl_c_abandons_an_lmm_call_in_flight_at_once(drip, tiny_model_files, tmp_path):
    config, weights = tiny_model_files
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "segment",
            str(PHOTO),
            "--classes",
            "cat, dog",
            "--lmm",
            f"openai:drip@{drip.url}",
            "--lmm-option",
            "timeout=600",
            "--clip-model",
            str(config),
            "--clip-pretrained",
            str(weights),
            "--out",
            str(tmp_path / "out"),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while drip.chats == 0:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.1)
        time.sleep(0.5)  # inside the dripping reply now
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        elapsed = time.monotonic() - interrupted
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    # "At once" against the request's own 600 s timeout: seconds, including the interpreter's exit, which
    # took 3.03 s once when the 2-core machine ran another suite beside this one.
    assert elapsed < 10, elapsed
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "openseg-r: interrupted"


# --------------------------------------------------------------------------- small messages


def test_a_missing_gguf_file_is_named_as_missing(capsys):
    assert call("lmm", "check", "hf:/nope/model.gguf") in (2, 4)
    err = capsys.readouterr().err
    assert "GGUF model file not found: /nope/model.gguf" in err and "Repo id" not in err


def test_reason_export_names_the_model_as_a_person_reads_it(tmp_path):
    from openseg_r._support.cache import SQLiteReasoningCache
    from openseg_r.cli.reason import model_label

    assert model_label("scripted:658da4d8edfa|{}") == "scripted:658da4d8edfa"
    assert model_label('openai:qwen|{"temperature": 0.2}') == "openai:qwen (temperature 0.2)"
    cache = tmp_path / "cache.sqlite"
    SQLiteReasoningCache(cache).put(
        "generic",
        {"model": "scripted:658da4d8edfa|{}", "subject": "cat"},
        {"name": "cat", "general_category": "animal", "attributes": ["fur"]},
    )
    proc = cli("reason", "export", "--cache", cache, "--out", tmp_path / "out.json")
    assert proc.returncode == 0, proc.stderr
    assert "scripted:658da4d8edfa to" in proc.stdout and "|{}" not in proc.stdout
