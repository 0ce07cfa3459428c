"""The pipelined evaluation (``concurrency`` > 1): images finish out of order on worker
threads, yet the totals, the per-image lines and resuming are those of one image at a
time; an error or an interruption stops it with the finished lines kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openseg_r import OpenSegR
from openseg_r.errors import ConfigError
from openseg_r.evals.datasets import DatasetError, get_dataset
from openseg_r.evals.runner import run_eval

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
OFFSETS = [(0, 0), (100, 150), (175, 250), (40, 300), (60, 40), (120, 0), (0, 200), (150, 100)]
WAIT_S = 120  # a safety net so a broken pipeline fails instead of hanging; nothing here is timed


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # PIL reads the content, not the name


@pytest.fixture
def voc_tree(tmp_path, voc):
    """A VOC21 tree of eight different crops of the real photo with their real masks."""
    base = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    ids = []
    for n, (y, x) in enumerate(OFFSETS):
        ident = f"crop{n}"
        ids.append(ident)
        crop = np.s_[y : y + 200, x : x + 200]
        _save(base / "JPEGImages" / f"{ident}.jpg", voc["rgb"][crop])
        _save(base / "SegmentationClass" / f"{ident}.png", voc["class_label"][crop].astype(np.uint8))
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / "data"


def _summary(folder: Path, with_calls: bool = True) -> dict:
    """summary.json without what differs between runs by nature (seconds)."""
    summary = json.loads((folder / "summary.json").read_text())
    dropped = {"seconds_per_image"} | (set() if with_calls else {"lmm_calls_per_image", "tokens_per_image"})
    return {
        "table": [{k: v for k, v in row.items() if k not in dropped} for row in summary["table"]],
        "per_class": summary["per_class"],
        "images": summary["images"],
    }


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "images.jsonl").read_text().splitlines()]


def _counts_by_image(folder: Path) -> dict:
    return {r["id"]: {name: entry["counts"] for name, entry in r["settings"].items()} for r in _lines(folder)}


def test_concurrent_run_gives_the_sequential_totals_and_lines(tmp_path, voc_tree, tiny_segmenter, monkeypatch):
    voc21 = get_dataset("voc21")
    run_eval(OpenSegR(segmenter=tiny_segmenter), voc21, voc_tree, tmp_path / "one", progress=False)
    seen = set()
    real = OpenSegR.segment

    def watched(self, *args, **kwargs):
        seen.add(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OpenSegR, "segment", watched)
    state = run_eval(
        OpenSegR(segmenter=tiny_segmenter), voc21, voc_tree, tmp_path / "four", progress=False, concurrency=4
    )
    monkeypatch.setattr(OpenSegR, "segment", real)
    assert len(seen) > 1 and threading.main_thread().name not in seen  # it did run on several workers
    assert len(state.done) == len(OFFSETS)
    assert _summary(tmp_path / "four") == _summary(tmp_path / "one")
    assert _counts_by_image(tmp_path / "four") == _counts_by_image(tmp_path / "one")
    assert len(_lines(tmp_path / "four")) == len(OFFSETS)
    run = json.loads((tmp_path / "four" / "run.json").read_text())
    assert run["throughput"]["concurrency"] == 4
    with pytest.raises(ConfigError, match="concurrency"):
        run_eval(OpenSegR(segmenter=tiny_segmenter), voc21, voc_tree, tmp_path / "zero", concurrency=0)


def _interrupt_by_raising(_calls: int) -> None:
    raise KeyboardInterrupt  # in a worker: handed to the caller's thread


def _interrupt_by_signal(_calls: int) -> None:
    # Ctrl-C, handled by Python on the main thread while it waits. Sent to the main thread:
    # raise_signal() targets the calling worker thread, and a worker that inherited a blocked
    # SIGINT (from a library that blocks it while starting threads) would keep it pending.
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


@pytest.mark.parametrize("interrupt", [_interrupt_by_raising, _interrupt_by_signal], ids=["raised", "ctrl-c"])
def test_an_interrupted_concurrent_run_resumes_to_the_sequential_totals(
    tmp_path, voc_tree, tiny_segmenter, monkeypatch, interrupt
):
    voc21 = get_dataset("voc21")
    run_eval(OpenSegR(segmenter=tiny_segmenter), voc21, voc_tree, tmp_path / "whole", progress=False)
    real = OpenSegR.segment
    lock, calls = threading.Lock(), {"n": 0}

    def interrupted_at_the_fourth(self, *args, **kwargs):
        with lock:
            calls["n"] += 1
            number = calls["n"]
        if number == 4:
            interrupt(number)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OpenSegR, "segment", interrupted_at_the_fourth)
    # Python's own Ctrl-C: a Ray session earlier in this worker process may have left its handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_eval(
                OpenSegR(segmenter=tiny_segmenter), voc21, voc_tree, tmp_path / "resumed", progress=False, concurrency=3
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(OpenSegR, "segment", real)
    folder = tmp_path / "resumed"
    kept = _lines(folder)  # every line whole: json.loads would fail on a cut one
    assert len(kept) < len(OFFSETS) and len({r["id"] for r in kept}) == len(kept)
    with (folder / "images.jsonl").open("a") as handle:
        handle.write('{"id": "crop7", "settings": {"def')  # and a line a crash cut short
    state = run_eval(OpenSegR(segmenter=tiny_segmenter), voc21, voc_tree, folder, progress=False, concurrency=2)
    assert len(state.done) == len(OFFSETS)
    assert sorted(r["id"] for r in _lines(folder)) == sorted(f"crop{n}" for n in range(len(OFFSETS)))
    assert _lines(folder)[: len(kept)] == kept  # the resumed run only appended the images not done
    assert _summary(folder) == _summary(tmp_path / "whole")


def test_how_fast_a_run_goes_does_not_block_its_resume(tmp_path, voc_tree, tiny_clip):
    from openseg_r.segmenters.dense_clip import CLIPSegmenter
    from openseg_r.segmenters.dense_clip.options import SegmenterConfig

    voc21 = get_dataset("voc21")
    out = tmp_path / "run"
    run_eval(OpenSegR(segmenter=CLIPSegmenter(tiny_clip)), voc21, voc_tree, out, limit=2, progress=False)
    faster = CLIPSegmenter(tiny_clip, SegmenterConfig(window_batch_size=3))  # a speed-only field
    state = run_eval(OpenSegR(segmenter=faster), voc21, voc_tree, out, limit=2, progress=False, concurrency=5)
    assert len(state.done) == 2 and len(_lines(out)) == 2
    run = json.loads((out / "run.json").read_text())
    assert run["throughput"]["concurrency"] == 5  # recorded, for information: the latest run's
    assert run["model"]["window_batch_size"] is None  # the rest stays as the folder was started
    other = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=224))  # changes results: no resume
    with pytest.raises(ConfigError, match="other settings \\(segmenter\\)"):
        run_eval(OpenSegR(segmenter=other), voc21, voc_tree, out, limit=2, progress=False, concurrency=5)


def test_a_bad_label_stops_the_run_with_the_lines_finished_before_kept(tmp_path, voc_tree, tiny_segmenter, monkeypatch):
    base = voc_tree / "VOCdevkit" / "VOC2012"
    rgb = np.asarray(Image.open(base / "JPEGImages" / "crop2.jpg"))[:150]  # the bad image alone is 150 rows high
    label = np.asarray(Image.open(base / "SegmentationClass" / "crop2.png"))[:150].copy()
    label[10:20, 10:20] = 77  # no VOC class, and not the ignore value
    _save(base / "JPEGImages" / "crop2.jpg", rgb)
    _save(base / "SegmentationClass" / "crop2.png", label)
    out = tmp_path / "bad"
    real = OpenSegR.segment
    gate = threading.Event()

    def bad_image_after_two_lines(self, image, *args, **kwargs):
        if image.shape == rgb.shape:  # let two other images finish and be written first
            for _ in range(WAIT_S * 20):
                log = out / "images.jsonl"
                if log.exists() and len(log.read_text().splitlines()) >= 2:
                    gate.set()
                    break
                threading.Event().wait(0.05)
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(OpenSegR, "segment", bad_image_after_two_lines)
    with pytest.raises(DatasetError) as error:
        run_eval(OpenSegR(segmenter=tiny_segmenter), get_dataset("voc21"), voc_tree, out, progress=False, concurrency=2)
    assert gate.is_set()
    message = str(error.value)
    assert "\n" not in message and "crop2" in message and "outside" in message
    kept = _lines(out)  # every line whole
    assert 2 <= len(kept) <= len(OFFSETS) - 1  # the finished ones kept, the bad one not
    assert "crop2" not in {r["id"] for r in kept}
    assert not (out / "summary.json").exists()


def test_a_bad_label_is_one_line_on_the_cli(tmp_path, voc_tree, tiny_model_files):
    label_file = voc_tree / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "crop5.png"
    label = np.asarray(Image.open(label_file)).copy()
    label[0, 0] = 77
    Image.fromarray(label).save(label_file)
    config, weights = tiny_model_files
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "eval",
            "--dataset",
            "voc21",
            "--root",
            voc_tree,
            "--out",
            tmp_path / "cli",
            "--clip-model",
            config,
            "--clip-pretrained",
            weights,
            "--cache",
            "none",
            "--text-cache",
            "none",
            "--concurrency",
            "3",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "crop5" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["throughput"]["concurrency"] == 3
    assert all(r["id"] != "crop5" for r in _lines(tmp_path / "cli"))
    wrong = subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", "eval", "--dataset", "voc21", "--root", voc_tree, "--concurrency", "0"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert wrong.returncode == 2 and "--concurrency" in wrong.stderr and "Traceback" not in wrong.stderr


def test_ablation_with_reasoning_runs_concurrently(tmp_path, voc_tree, tiny_clip):
    from openseg_r.lmm import ScriptedLMM
    from openseg_r.segmenters.dense_clip import CLIPSegmenter

    script = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
    script["self_check"] = {"choice": "none of these", "confidence": 0.9}
    voc21 = get_dataset("voc21")
    segmenters = [CLIPSegmenter(tiny_clip), CLIPSegmenter(tiny_clip)]  # nothing kept from another test's images
    one = run_eval(
        OpenSegR(segmenter=segmenters[0], lmm=ScriptedLMM(script), reasoning_cache="none"),
        voc21,
        voc_tree,
        tmp_path / "one",
        ablation=True,
        limit=4,
        progress=False,
    )
    lmm = ScriptedLMM(script)
    four = run_eval(
        OpenSegR(segmenter=segmenters[1], lmm=lmm, reasoning_cache="none"),
        voc21,
        voc_tree,
        tmp_path / "four",
        ablation=True,
        limit=4,
        progress=False,
        concurrency=4,
    )
    # five settings, four images in flight together, each image encoded once
    assert [s.encoded_images for s in segmenters] == [4, 4]
    assert list(four.totals) == list(one.totals) and len(four.totals) == 5
    assert all(len(r["settings"]) == 5 for r in _lines(tmp_path / "four"))
    assert _counts_by_image(tmp_path / "four") == _counts_by_image(tmp_path / "one")
    # LMM calls too: each class's generic reasoning is asked once, though four images want it at once
    assert _summary(tmp_path / "four") == _summary(tmp_path / "one")
    asked = [r.subject for r in lmm.requests if r.step == "generic_reasoning"]
    assert sorted(asked) == sorted(set(asked)) and len(asked) == 20
    assert len([r for r in lmm.requests if r.step == "image_reasoning"]) == 4  # once per image, for three settings
    assert four.totals["+ self-check"].lmm_calls > 0
