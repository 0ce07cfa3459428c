"""Evaluation: metrics against an independent computation, each dataset reader on a
fake tree in its real layout, shards and merge, resume, the one-pass ablation, and
the shipped mini benchmark end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from openseg_r import OpenSegR
from openseg_r.errors import ConfigError
from openseg_r.evals.datasets import DATASETS, DatasetError, get_dataset, select
from openseg_r.evals.metrics import AreaCounts, image_counts, reduce_zero_label, summarize
from openseg_r.evals.runner import merge, run_eval

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


# --------------------------------------------------------------------------- metrics


def reference_metrics(preds, labels, num_classes, ignore):
    """An independent computation: a full confusion matrix accumulated pixel by pixel with
    np.add.at, then the textbook formulas."""
    confusion = np.zeros((num_classes, num_classes + 1), np.int64)  # last column: predictions outside the classes
    for pred, label in zip(preds, labels):
        keep = label != ignore
        p = pred[keep].copy()
        p[(p < 0) | (p >= num_classes)] = num_classes
        np.add.at(confusion, (label[keep], p), 1)
    tp = np.diag(confusion[:, :num_classes]).astype(float)
    gt = confusion.sum(1).astype(float)
    predicted = confusion[:, :num_classes].sum(0).astype(float)
    union = gt + predicted - tp
    valid = union > 0
    iou = tp[valid] / union[valid]
    labelled = gt > 0
    return {
        "mIoU": 100 * iou.mean() if valid.any() else None,
        "aAcc": 100 * tp.sum() / gt.sum() if gt.sum() else None,
        "mAcc": 100 * (tp[labelled] / gt[labelled]).mean() if labelled.any() else None,
        "fwIoU": 100 * ((gt[valid] / gt.sum()) * iou).sum() if gt.sum() else None,
        "IoU": {c: (100 * tp[c] / union[c] if union[c] else None) for c in range(num_classes)},
    }


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_classes=st.integers(1, 12),
    images=st.integers(1, 4),
    ignore_share=st.floats(0, 0.6),
    unknown_share=st.floats(0, 0.2),
)
def test_metrics_match_an_independent_computation(seed, num_classes, images, ignore_share, unknown_share):
    rng = np.random.default_rng(seed)
    present = rng.choice(num_classes, size=max(1, num_classes // 2), replace=False)  # some classes never appear
    preds, labels = [], []
    total = AreaCounts.zeros(num_classes)
    for _ in range(images):
        shape = tuple(rng.integers(1, 30, 2))
        label = rng.choice(present, size=shape)
        label[rng.random(shape) < ignore_share] = 255
        pred = rng.integers(0, num_classes, shape)
        pred[rng.random(shape) < unknown_share] = -1  # the self-check's "unknown"
        preds.append(pred)
        labels.append(label)
        total = total + image_counts(pred, label, num_classes, 255)
    ours = summarize(total)
    reference = reference_metrics(preds, labels, num_classes, 255)
    for key in ("mIoU", "aAcc", "mAcc", "fwIoU"):
        if reference[key] is None:
            assert ours[key] is None
        else:
            assert ours[key] == pytest.approx(reference[key], abs=1e-3)
    for c in range(num_classes):
        got = ours["per_class"][str(c)]["IoU"]
        assert (got is None) == (reference["IoU"][c] is None)
        if got is not None:
            assert got == pytest.approx(reference["IoU"][c], abs=1e-3)


def test_reduce_zero_label_and_empty_classes():
    label = np.array([[0, 1, 2], [3, 255, 0]])
    assert reduce_zero_label(label).tolist() == [[255, 0, 1], [2, 255, 255]]
    counts = image_counts(np.array([[0, 0, 1], [2, 2, 2]]), reduce_zero_label(label), num_classes=4)
    result = summarize(counts)
    assert counts.label.tolist() == [1, 1, 1, 0]  # class 3 is labelled nowhere
    assert result["per_class"]["3"]["IoU"] is None and result["classes_evaluated"] == 3
    assert result["per_class"]["0"]["IoU"] == 100.0 and result["aAcc"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="outside"):
        image_counts(np.zeros((1, 2), int), np.array([[7, 0]]), num_classes=4)


def test_sparse_counts_round_trip():
    counts = image_counts(np.array([[0, 5], [5, 5]]), np.array([[0, 5], [1, 255]]), num_classes=8)
    assert AreaCounts.from_sparse(json.loads(json.dumps(counts.to_sparse())), 8).union.tolist() == counts.union.tolist()


# --------------------------------------------------------------------------- readers


def png(path: Path, array: np.ndarray, mode=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def jpg(path: Path, rng, size=(24, 32)) -> None:
    png(path.with_suffix(".png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    path.with_suffix(".png").rename(path)  # PIL reads the content, not the name


def fake_tree(root: Path, name: str, rng, ids=("a", "b", "c")) -> None:
    """Write a dataset in its real layout: images, label maps, split lists."""
    size = (24, 32)
    label8 = lambda top: rng.integers(0, top, size).astype(np.uint8)  # noqa: E731
    if name in ("voc21", "voc20"):
        base = root / "VOCdevkit" / "VOC2012"
        for i in ids:
            jpg(base / "JPEGImages" / f"{i}.jpg", rng)
            label = label8(21)
            label[0, 0] = 255
            png(base / "SegmentationClass" / f"{i}.png", label)
        (base / "ImageSets" / "Segmentation").mkdir(parents=True)
        (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    elif name in ("pc59", "pc60"):
        base = root / "VOCdevkit" / "VOC2010"
        for i in ids:
            jpg(base / "JPEGImages" / f"{i}.jpg", rng)
            png(base / "SegmentationClassContext" / f"{i}.png", label8(60))
        (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
        (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids) + "\n")
    elif name == "pc459":
        for i in ids:
            jpg(root / "pascal_ctx_d2" / "images" / "validation" / f"{i}.jpg", rng)
            label = rng.integers(0, 459, size).astype(np.uint16)
            label[0, 0] = 65535
            png(root / "pascal_ctx_d2" / "annotations_ctx459" / "validation" / f"{i}.tif", label)
    elif name == "ade150":
        for i in ids:
            jpg(root / "ADEChallengeData2016" / "images" / "validation" / f"{i}.jpg", rng)
            png(root / "ADEChallengeData2016" / "annotations" / "validation" / f"{i}.png", label8(151))
    elif name == "ade847":
        for i in ids:
            jpg(root / "ADE20K_2021_17_01" / "images_detectron2" / "validation" / f"{i}.jpg", rng)
            label = rng.integers(0, 847, size).astype(np.uint16)
            label[0, 0] = 65535
            png(root / "ADE20K_2021_17_01" / "annotations_detectron2" / "validation" / f"{i}.tif", label)
    elif name == "coco_stuff171":
        for i in ids:
            jpg(root / "coco_stuff164k" / "images" / "val2017" / f"{i}.jpg", rng)
            png(root / "coco_stuff164k" / "annotations" / "val2017" / f"{i}_labelTrainIds.png", label8(171))
    elif name == "coco_object":
        for i in ids:
            jpg(root / "coco_object" / "images" / "val2017" / f"{i}.jpg", rng)
            png(root / "coco_object" / "annotations" / "val2017" / f"{i}_instanceTrainIds.png", label8(81))
    elif name == "cityscapes":
        for n, i in enumerate(ids):
            city = "aachen" if n % 2 else "zurich"
            jpg(root / "cityscapes" / "leftImg8bit" / "val" / city / f"{i}_leftImg8bit.png", rng)
            png(root / "cityscapes" / "gtFine" / "val" / city / f"{i}_gtFine_labelTrainIds.png", label8(19))
    elif name == "folder":
        for i in ids:
            jpg(root / "images" / f"{i}.jpg", rng)
            png(root / "labels" / f"{i}.png", label8(3))
        (root / "classes.txt").write_text("background\ncat\nsofa\n")


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_reader_on_its_real_layout(tmp_path, name):
    rng = np.random.default_rng(0)
    fake_tree(tmp_path, name, rng)
    spec = get_dataset(name)
    samples = spec.samples(tmp_path)
    assert len(samples) == 3 and all(s.image.is_file() and s.label.is_file() for s in samples)
    vocabulary = spec.load_vocabulary(tmp_path)
    classes = len(vocabulary.classes)
    for sample in samples:
        label = spec.load_label(sample.label)
        valid = label[label != spec.ignore_index]
        assert label.shape == (24, 32) and valid.min() >= 0 and valid.max() < classes
    raw = np.asarray(Image.open(samples[0].label)).astype(np.int64)
    converted = spec.load_label(samples[0].label)
    if name in ("voc20", "pc59", "ade150"):  # reduce-zero-label
        assert np.all(converted[raw == 0] == 255) and np.array_equal(
            converted[(raw > 0) & (raw < 255)], raw[(raw > 0) & (raw < 255)] - 1
        )
    else:
        assert np.array_equal(converted, raw)
    if name in ("pc459", "ade847"):
        assert spec.ignore_index == 65535 and converted[0, 0] == 65535


@pytest.mark.parametrize("name", ["voc21", "ade150", "cityscapes", "folder", "ade847"])
def test_a_wrong_layout_says_what_is_missing(tmp_path, name):
    (tmp_path / "something").mkdir()
    with pytest.raises(DatasetError, match="missing") as error:
        get_dataset(name).samples(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_missing_label_files_are_listed(tmp_path):
    fake_tree(tmp_path, "ade150", np.random.default_rng(0))
    next((tmp_path / "ADEChallengeData2016" / "annotations" / "validation").glob("b.png")).unlink()
    with pytest.raises(DatasetError, match="1 image\\(s\\) have no label file"):
        get_dataset("ade150").samples(tmp_path)


def test_subset_is_deterministic_and_shards_partition_it(tmp_path):
    fake_tree(tmp_path, "folder", np.random.default_rng(0), ids=[f"im{i:02d}" for i in range(20)])
    samples = get_dataset("folder").samples(tmp_path)
    subset = select(samples, limit=7, seed=3)
    assert [s.id for s in subset] == [s.id for s in select(samples, limit=7, seed=3)]
    assert [s.id for s in subset] != [s.id for s in select(samples, limit=7, seed=4)]
    shards = [select(samples, limit=7, seed=3, shard=(i, 3)) for i in range(3)]
    assert sorted(s.id for shard in shards for s in shard) == sorted(s.id for s in subset)


# --------------------------------------------------------------------------- runner


@pytest.fixture
def voc_tree(tmp_path, voc):
    """A VOC21 tree of four real-photo crops with their real masks."""
    base = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    ids = []
    for n, (y, x) in enumerate([(0, 0), (100, 150), (175, 250), (40, 300)]):
        ident = f"crop{n}"
        ids.append(ident)
        png(base / "JPEGImages" / f"{ident}.png", voc["rgb"][y : y + 200, x : x + 200])
        (base / "JPEGImages" / f"{ident}.png").rename(base / "JPEGImages" / f"{ident}.jpg")
        png(base / "SegmentationClass" / f"{ident}.png", voc["class_label"][y : y + 200, x : x + 200].astype(np.uint8))
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / "data"


def _summary(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "table": [{k: v for k, v in row.items() if k != "seconds_per_image"} for row in summary["table"]],
        "per_class": summary["per_class"],
        "images": summary["images"],
    }


def test_shards_merge_to_exactly_one_pass(tmp_path, voc_tree, tiny_segmenter):
    model = OpenSegR(segmenter=tiny_segmenter)
    voc21 = get_dataset("voc21")
    run_eval(model, voc21, voc_tree, tmp_path / "whole", progress=False)
    for i in range(3):
        run_eval(model, voc21, voc_tree, tmp_path / f"shard{i}", shard=(i, 3), progress=False)
    merge([tmp_path / f"shard{i}" for i in range(3)], tmp_path / "merged")
    assert _summary(tmp_path / "merged") == _summary(tmp_path / "whole")
    assert _summary(tmp_path / "whole")["images"] == 4


def test_resume_after_an_interruption_gives_the_same_numbers(tmp_path, voc_tree, tiny_segmenter, monkeypatch):
    model = OpenSegR(segmenter=tiny_segmenter)
    voc21 = get_dataset("voc21")
    run_eval(model, voc21, voc_tree, tmp_path / "whole", progress=False)
    calls = {"n": 0}
    real = OpenSegR.segment

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OpenSegR, "segment", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_eval(model, voc21, voc_tree, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(OpenSegR, "segment", real)
    log = tmp_path / "resumed" / "images.jsonl"
    assert len(log.read_text().splitlines()) == 2
    with log.open("a") as handle:
        handle.write('{"id": "crop2", "settings": {"def')  # a line a crash cut short
    state = run_eval(model, voc21, voc_tree, tmp_path / "resumed", progress=False)
    assert len(state.done) == 4 and _summary(tmp_path / "resumed") == _summary(tmp_path / "whole")
    assert len(log.read_text().splitlines()) == 4
    with pytest.raises(ConfigError, match="other settings"):
        run_eval(model, voc21, voc_tree, tmp_path / "resumed", limit=2, progress=False)


def test_ablation_is_one_pass_with_each_image_encoded_once(tmp_path, voc_tree, tiny_clip):
    script = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
    script["self_check"] = {"choice": "none of these", "confidence": 0.9}
    from openseg_r.lmm import ScriptedLMM
    from openseg_r.segmenters.dense_clip import CLIPSegmenter

    tiny_segmenter = CLIPSegmenter(tiny_clip)  # its own: the shared one keeps other tests' features
    model = OpenSegR(segmenter=tiny_segmenter, lmm=ScriptedLMM(script))
    before = tiny_segmenter.encoded_images
    state = run_eval(model, get_dataset("voc21"), voc_tree, tmp_path / "ablation", ablation=True, progress=False)
    assert tiny_segmenter.encoded_images - before == 4  # five settings, four images
    summary = json.loads((tmp_path / "ablation" / "summary.json").read_text())
    assert [row["setting"] for row in summary["table"]] == list(state.totals)
    assert summary["table"][0]["delta"] == 0 and len(summary["largest_class_changes"]) <= 10
    assert summary["table"][1]["lmm_calls_per_image"] == 5.0  # 20 generic calls, once, over 4 images
    markdown = (tmp_path / "ablation" / "summary.md").read_text()
    assert "| + class filter |" in markdown and "Largest per-class IoU changes" in markdown


def test_mini_benchmark_end_to_end_on_the_cli(tmp_path, tiny_model_files):
    config, weights = tiny_model_files
    built = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "make_mini_benchmark.py", tmp_path / "mini"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    common = ["--clip-model", config, "--clip-pretrained", weights, "--cache", "none"]
    voc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "eval",
            "--dataset",
            "voc21",
            "--root",
            tmp_path / "mini" / "voc",
            "--lmm",
            f"scripted:{ROOT / 'examples' / 'voc_reasoning.json'}",
            "--ablation",
            "--out",
            tmp_path / "ev-voc",
            *map(str, common),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert voc.returncode == 0, voc.stderr
    assert "| bare names |" in voc.stdout and "| + self-check |" in voc.stdout
    arc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "eval",
            "--dataset",
            "folder",
            "--root",
            tmp_path / "mini" / "arc2017",
            "--out",
            tmp_path / "ev-arc",
            *map(str, common),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert arc.returncode == 0, arc.stderr
    summary = json.loads((tmp_path / "ev-arc" / "summary.json").read_text())
    assert summary["images"] == 1 and summary["config"]["classes"] == 41
    merged = subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", "eval", "merge", tmp_path / "ev-arc", "--out", tmp_path / "ev-merged"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert merged.returncode == 0, merged.stderr
    assert json.loads((tmp_path / "ev-merged" / "summary.json").read_text())["per_class"] == summary["per_class"]
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "eval",
            "--dataset",
            "ade150",
            "--root",
            tmp_path / "mini" / "voc",
            "--out",
            tmp_path / "x",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert wrong.returncode == 2 and "layout was not found" in wrong.stderr and "Traceback" not in wrong.stderr


def test_shard_auto_takes_the_launchers_rank(tmp_path, voc_tree, tiny_model_files):
    config, weights = tiny_model_files
    outs = []
    for rank in range(2):  # what torchrun --nproc-per-node 2 would start
        env = dict(ENV, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
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
                "--shard",
                "auto",
                "--out",
                tmp_path / "out",
                "--clip-model",
                config,
                "--clip-pretrained",
                weights,
                "--device",
                "cpu",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(tmp_path / "out" / f"shard-{rank}-of-2")
    assert all((o / "summary.json").is_file() for o in outs)
    merged = merge(outs, tmp_path / "merged")
    assert len(merged.done) == 4
    missing = subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", "eval", "--dataset", "voc21", "--root", voc_tree, "--shard", "auto"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert missing.returncode == 2 and "RANK and WORLD_SIZE" in missing.stderr
