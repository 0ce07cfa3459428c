"""The command line: exit codes, one-line errors, and the files it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openseg_r import cli

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"


def run(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def tiny_args(tiny_model_files):
    config, weights = tiny_model_files
    return ["--clip-model", config, "--clip-pretrained", weights]


def test_segment_writes_the_three_files(tmp_path, tiny_args):
    out = tmp_path / "out"
    proc = run("segment", PHOTO, "--vocab", "voc21", "--lmm", f"scripted:{SCRIPT}", *tiny_args, "--out", out)
    assert proc.returncode == 0, proc.stderr
    labels = Image.open(out / "labels.png")
    assert labels.mode == "P" and labels.size == (500, 375)
    overlay = Image.open(out / "overlay.png")
    assert overlay.size[1] == 375 and overlay.size[0] > 500  # image plus legend
    result = json.loads((out / "result.json").read_text())
    assert result["vocabulary"]["name"] == "voc21" and len(result["classes"]) == 21
    assert result["reasoning"]["image"]["description"].startswith("People eating")
    assert result["prompts"]["classes"][9]["name"] == "chair"
    assert [t["node"] for t in result["timings"]][-3:] == ["prompt_composition", "segmentation", "finalize"]
    assert result["lmm_usage"]["calls"] == 21
    index = np.asarray(labels)
    counts = np.bincount(index.ravel(), minlength=21)
    assert [c["pixels"] for c in result["classes"]] == counts.tolist()
    for name in result["present_classes"]:
        assert name in proc.stdout


def test_no_reasoning_baseline(tmp_path, tiny_args):
    proc = run("segment", PHOTO, "--classes", "person, table, chair", "--no-reasoning", *tiny_args, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["settings"]["reasoning"] is False and result["lmm_calls"] == []


def test_invalid_lmm_answer_is_a_recorded_fallback(tmp_path, tiny_args):
    script = tmp_path / "bad.json"
    script.write_text(json.dumps({"generic_reasoning": {"person": "<<<not json>>>"}, "image_reasoning": ""}))
    proc = run(
        "segment",
        PHOTO,
        "--classes",
        "person, chair",
        "--lmm",
        f"scripted:{script}",
        "--allow-fallback",  # every answer unusable: exit 4 without it (tests/test_lmm_health.py)
        *tiny_args,
        "--out",
        tmp_path / "o",
    )
    assert proc.returncode == 0, proc.stderr
    fallbacks = json.loads((tmp_path / "o" / "result.json").read_text())["fallbacks"]
    assert {(f["step"], f["subject"]) for f in fallbacks} == {
        ("generic_reasoning", "person"),
        ("generic_reasoning", "chair"),
        ("image_reasoning", "image-single-v1"),
    }
    assert "fallback in" in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["segment", "missing.jpg", "--classes", "cat"], "image not found"),
        (["segment", PHOTO, "--classes", " , "], "vocabulary is empty"),
        (["segment", PHOTO, "--vocab", "nonsense"], "unknown vocabulary"),
        (["segment", PHOTO, "--classes", "cat", "--clip-pretrained", "/nope/weights.pt"], "weights file not found"),
        (["segment", PHOTO, "--classes", "cat", "--lmm", "magic:x"], "unknown LMM backend"),
        (["segment", PHOTO, "--classes", "cat", "--max-pixels", "1000"], "over the limit"),
        (["segment", PHOTO, "--classes", "cat", "--n-attributes", "0", "--lmm", f"scripted:{SCRIPT}"], "n_attributes"),
        (["segment", PHOTO], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    proc = run(*args, "--out", tmp_path) if args[0] == "segment" else run(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("openseg-r")]) == 1


def test_corrupt_image_exits_2(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(PHOTO.read_bytes()[:2000])
    proc = run("segment", bad, "--classes", "cat", "--out", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_internal_error_exits_1_without_traceback(monkeypatch, tmp_path, capsys, tiny_args):
    import openseg_r.model

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(openseg_r.model.OpenSegR, "segment", explode)
    code = cli.main(["segment", str(PHOTO), "--classes", "cat", *map(str, tiny_args), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "internal error: RuntimeError: boom" in err and "Traceback" not in err


def test_vocabularies_lists_the_builtins():
    proc = run("vocabularies")
    assert proc.returncode == 0 and "ade847" in proc.stdout and "847 classes" in proc.stdout


def test_reason_generic_is_resumable_and_exports_and_imports(tmp_path):
    script = tmp_path / "answers.json"
    script.write_text(
        json.dumps(
            {
                "generic_reasoning": {
                    "cat": {
                        "name": "cat",
                        "general_category": "animal",
                        "sub_category": "pet",
                        "attributes": ["whiskers", "fur"],
                    },
                    "sofa": "garbage",
                }
            }
        )
    )
    cache = tmp_path / "r.sqlite"
    first = run("reason", "generic", "--classes", "cat, sofa, lamp", "--lmm", f"scripted:{script}", "--cache", cache)
    assert first.returncode == 0, first.stderr
    assert "0 already cached, 1 reasoned now, 2 failed" in first.stdout
    second = run("reason", "generic", "--classes", "cat, sofa, lamp", "--lmm", f"scripted:{script}", "--cache", cache)
    assert "1 already cached, 0 reasoned now, 2 failed" in second.stdout
    exported = tmp_path / "export.json"
    assert run("reason", "export", "--cache", cache, "-o", exported).returncode == 0
    upstream = json.loads(exported.read_text())
    assert upstream["cat"]["class_des"] == ["whiskers", "fur"]
    assert "A3:" in upstream["cat"]["raw_response"] and list(upstream) == ["cat"]
    other = tmp_path / "other.sqlite"
    imported = run("reason", "import", exported, "--lmm", f"scripted:{script}", "--cache", other)
    assert imported.returncode == 0, imported.stderr
    resumed = run("reason", "generic", "--classes", "cat", "--lmm", f"scripted:{script}", "--cache", other)
    assert "1 already cached, 0 reasoned now, 0 failed" in resumed.stdout


def test_reason_needs_an_lmm(tmp_path):
    proc = run("reason", "generic", "--vocab", "voc20", "--cache", tmp_path / "c.sqlite", "--lmm", "none")
    assert proc.returncode == 2 and "give an LMM" in proc.stderr


def test_segment_with_chain_mode_record_and_cache(tmp_path, tiny_args):
    script = json.loads(SCRIPT.read_text())
    single = script["image_reasoning"]
    script["image_reasoning"] = [
        {"description": single["description"]},
        {"present": [c["name"] for c in single["candidates"]]},
        {"candidates": single["candidates"]},
    ]
    chain_script = tmp_path / "chain.json"
    chain_script.write_text(json.dumps(script))
    log, cache = tmp_path / "calls.jsonl", tmp_path / "cache.sqlite"
    args = [
        "segment",
        PHOTO,
        "--vocab",
        "voc21",
        "--lmm",
        f"scripted:{chain_script}",
        "--image-reasoning",
        "chain",
        "--lmm-record",
        log,
        "--cache",
        cache,
        *tiny_args,
    ]
    proc = run(*args, "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["lmm_usage"]["image_reasoning_mode"] == "chain" and result["lmm_usage"]["calls"] == 20 + 3
    assert result["present_classes"] and result["fallbacks"] == []
    assert len(log.read_text().splitlines()) == 23
    again = run(*args, "--out", tmp_path / "b")
    assert again.returncode == 0, again.stderr
    cached = json.loads((tmp_path / "b" / "result.json").read_text())
    assert cached["lmm_usage"]["calls"] == 0
    assert cached["reasoning_cache"]["hits"] == 21 and cached["reasoning_cache"]["misses"] == 0
    assert cached["prompts"] == result["prompts"]


def test_segment_with_self_check(tmp_path, tiny_args):
    script = json.loads(SCRIPT.read_text()) | {"self_check": {"choice": "chair", "confidence": 0.9, "reason": "legs"}}
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    proc = run(
        "segment",
        PHOTO,
        "--classes",
        "person, chair, table, bottle",
        "--lmm",
        f"scripted:{path}",
        "--no-reasoning",
        "--self-check",
        "--self-check-margin",
        "0.5",
        "--self-check-k",
        "2",
        "--self-check-max-calls",
        "3",
        *tiny_args,
        "--out",
        tmp_path / "o",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    trace = result["self_check"]
    assert result["settings"]["self_check"]["top_k"] == 2 and result["settings"]["reasoning"] is False
    assert 1 <= trace["lmm_calls"] <= 3 and len(trace["answers"]) >= 1
    assert all((tmp_path / "o" / a["crop_file"]).is_file() for a in trace["answers"])
    assert "self-check:" in proc.stdout and trace["stopped"] in proc.stdout


def test_self_check_needs_an_lmm_or_a_human(tmp_path, tiny_args):
    proc = run("segment", PHOTO, "--classes", "person, chair", "--self-check", *tiny_args, "--out", tmp_path)
    assert proc.returncode == 2 and "needs an LMM" in proc.stderr and "Traceback" not in proc.stderr


def test_self_check_human_mode_reads_answers_from_the_terminal(tmp_path, tiny_args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    args = [
        "segment",
        PHOTO,
        "--classes",
        "person, chair, table",
        "--no-reasoning",
        "--self-check",
        "--self-check-mode",
        "human",
        "--self-check-margin",
        "0.5",
        "--self-check-rounds",
        "1",
        "--self-check-k",
        "2",
        *tiny_args,
        "--out",
        tmp_path,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, args)],
        input="2\n\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("your choice") == 2
    answers = json.loads((tmp_path / "result.json").read_text())["self_check"]["answers"]
    assert [a["source"] for a in answers] == ["human", "human"]
    assert answers[0]["confidence"] == 1.0 and answers[1]["confidence"] == 0.0  # the second was skipped
