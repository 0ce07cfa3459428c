"""The ``sam3`` kind on a tiny random SAM 3 built and saved here (tests/tiny_sam3.py): the
graph end to end, batches, phrases, the class filter, instances, the semantic rule against
SAM 3's own post-processing, and one-line errors for bad models and budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sam3 import save_tiny_sam3

from openseg_r import OpenSegR
from openseg_r._support.rle import decode_rle, encode_rle
from openseg_r.errors import ConfigError, WeightsError
from openseg_r.schemas import UNKNOWN_LABEL, ClassPrompts, PromptSet
from openseg_r.segmenters.base import BuildRequest, ClassFilter, SegmentJob
from openseg_r.segmenters.registry import build_segmenter, describe_kinds
from openseg_r.segmenters.sam3.merge import Found, merge
from openseg_r.segmenters.sam3.phrases import class_phrases, phrases_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SCRIPT = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
EVERY_QUERY = {"instance_threshold": 0.0}  # random weights score low: count every query as an instance


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory) -> Path:
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3") / "model")


def sam3(folder: Path, **options):
    return build_segmenter("sam3", {"model": str(folder), **options}, BuildRequest(device="cpu", precision="fp32"))


def prompts(*classes: tuple[str, list[str], list[str | None]]) -> PromptSet:
    return PromptSet(
        templates="vild",
        score_order="max_then_softmax",
        classes=[
            ClassPrompts(name=name, queries=queries, slots=slots, source="image") for name, queries, slots in classes
        ],
    )


# --------------------------------------------------------------------------- the kind and its phrases


def test_sam3_is_a_registered_kind_with_its_options():
    (sam3_kind,) = [k for k in describe_kinds() if k["kind"] == "sam3"]
    options = {o["name"]: o for o in sam3_kind["options"]}
    assert options["model"]["default"] == "facebook/sam3" and options["phrase_batch"]["speed_only"]
    assert {"phrases_per_class", "max_phrases", "instance_threshold", "mask_threshold"} <= set(options)


def test_phrases_are_names_synonyms_then_short_attribute_phrases():
    assert class_phrases(["sofa", "couch", "Sofa"], ["red", None, "a long description of a sofa"], 4) == [
        "sofa",
        "couch",
        "red sofa",
    ]
    assert class_phrases(["bus"], ["red double-decker", "yellow"], 2) == ["bus", "red double-decker bus"]
    phrases = phrases_for(prompts(("cat", ["cat", "kitty"], ["striped"]), ("sofa", ["sofa"], [None])), 4, 10)
    assert phrases.phrases == ("cat", "kitty", "striped cat", "sofa") and phrases.classes == (0, 0, 0, 1)
    with pytest.raises(ConfigError) as caught:
        phrases_for(prompts(*[(f"c{i}", [f"c{i}", f"d{i}"], [None]) for i in range(6)]), 4, 10)
    assert "\n" not in str(caught.value) and "12 SAM 3 phrases, over the text budget of 10" in str(caught.value)


def _found(classes, scores, masks):
    masks = torch.tensor(np.array(masks, dtype=np.float32)) * 20 - 10  # logits: +10 inside, -10 outside
    return Found(
        phrases=list(range(len(classes))),
        classes=list(classes),
        scores=torch.tensor(scores),
        boxes=torch.tensor([[0.0, 0.0, 0.5, 0.5]] * len(classes)),
        mask_logits=masks,
    )


def test_the_semantic_rule_best_instance_owns_a_pixel_and_another_class_is_the_runner_up():
    a = [[1, 1, 0, 0]] * 2
    b = [[0, 1, 1, 0]] * 2
    found = _found([0, 1], [0.9, 0.6], [a, b])
    arrays = merge(
        found,
        (2, 4),
        ("cat", "dog"),
        mask_threshold=0.5,
        background_index=None,
        background_threshold=0.0,
        suppressed=[],
    )
    assert arrays.labels.tolist() == [[0, 0, 1, UNKNOWN_LABEL]] * 2
    assert arrays.runner_up.tolist() == [[-1, 1, -1, -1]] * 2
    assert np.allclose(arrays.margin[0], [0.9, 0.3, 0.6, 0.0]) and np.allclose(arrays.confidence[0], [0.9, 0.9, 0.6, 0])
    with_background = merge(
        found, (2, 4), ("cat", "dog"), mask_threshold=0.5, background_index=2, background_threshold=0.7, suppressed=[]
    )
    assert with_background.labels.tolist() == [[0, 0, 2, 2]] * 2 and with_background.background_pixels == 4
    assert [i.phrase for i in arrays.instances] == ["cat", "dog"] and arrays.instances[0].box == (0.0, 0.0, 2.0, 1.0)


def test_the_semantic_head_takes_the_pixels_no_instance_covers():
    """Stuff without instances: where no mask reaches, the class whose semantic map is highest
    (above the threshold) takes the pixel, and the next class is its runner-up."""
    found = _found([0], [0.9], [[[1, 0, 0, 0]] * 2])
    maps = torch.tensor([[[0.2, 0.2, 0.9, 0.3]] * 2, [[0.1, 0.7, 0.8, 0.2]] * 2])  # classes 1 and 2
    arrays = merge(
        found,
        (2, 4),
        ("cat", "sky", "road"),
        mask_threshold=0.5,
        background_index=None,
        background_threshold=0.0,
        suppressed=[],
        semantic=([1, 2], maps),
        semantic_threshold=0.5,
    )
    assert arrays.labels.tolist() == [[0, 2, 1, UNKNOWN_LABEL]] * 2  # the instance keeps its pixel
    assert arrays.runner_up.tolist() == [[-1, 1, 2, -1]] * 2
    assert np.allclose(arrays.margin[0][:3], [0.9, 0.5, 0.1]) and np.allclose(arrays.confidence[0][2], 0.9)
    off = merge(
        found,
        (2, 4),
        ("cat", "sky", "road"),
        mask_threshold=0.5,
        background_index=None,
        background_threshold=0.0,
        suppressed=[],
        semantic=([1, 2], maps),
        semantic_threshold=1.0,
    )
    assert off.labels.tolist() == [[0, UNKNOWN_LABEL, UNKNOWN_LABEL, UNKNOWN_LABEL]] * 2


def test_instance_masks_survive_the_rle_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(json.loads(json.dumps(rle))), mask)


# --------------------------------------------------------------------------- the model


def test_the_semantic_rule_is_sam3s_own_post_processing(sam3_folder):
    """For one phrase, SAM 3's processor (instances above the threshold, masks resized and
    binarised) painted lowest score first gives our label map."""
    from transformers import Sam3Model, Sam3Processor

    rng = np.random.default_rng(1)
    rgb = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    every = sam3(sam3_folder, semantic_threshold=1.0, **EVERY_QUERY)  # instances alone, as the processor
    bank = every.query_bank(prompts(("cat", ["cat"], [None])))
    threshold = float(np.median([i.score for i in every.segment(rgb, bank).instances]))  # about half count
    segmenter = sam3(sam3_folder, instance_threshold=threshold, semantic_threshold=1.0)
    arrays = segmenter.segment(rgb, segmenter.query_bank(prompts(("cat", ["cat"], [None]))))
    model, processor = (
        Sam3Model.from_pretrained(str(sam3_folder)).eval(),
        Sam3Processor.from_pretrained(str(sam3_folder)),
    )
    with torch.inference_mode():
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        text = processor.tokenizer("cat", padding="max_length", max_length=32, return_tensors="pt")
        outputs = model(pixel_values=pixels, input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    (theirs,) = processor.post_process_instance_segmentation(
        outputs, threshold=threshold, mask_threshold=0.5, target_sizes=[rgb.shape[:2]]
    )
    assert 0 < len(theirs["scores"]) == len(arrays.instances) < len(every.segment(rgb, bank).instances)
    painted = np.full(rgb.shape[:2], UNKNOWN_LABEL)
    for k in torch.argsort(theirs["scores"]).tolist():  # the best last: it owns the pixel
        painted[theirs["masks"][k].numpy().astype(bool)] = 0
    assert np.array_equal(arrays.labels, painted)
    assert np.allclose(sorted(i.score for i in arrays.instances), sorted(theirs["scores"].tolist()), atol=1e-5)


def test_the_whole_graph_runs_with_and_without_reasoning_and_the_self_check(sam3_folder, voc):
    script = dict(SCRIPT, self_check={"choice": "none of these", "confidence": 0.9})
    from openseg_r.lmm import ScriptedLMM

    model = OpenSegR(
        segmenter="sam3",
        model=str(sam3_folder),
        device="cpu",
        precision="fp32",
        lmm=ScriptedLMM(script),
        reasoning_cache="none",
        **EVERY_QUERY,
    )
    rgb = voc["rgb"][:160, :200]
    reasoned = model.segment(rgb, "voc21")
    assert reasoned.to_json()["segmenter"]["kind"] == "sam3" and reasoned.instances
    present = set(reasoned.state.alignment.present) | {"background"}  # the background class is never filtered
    phrases = reasoned.state.segmentation.phrases  # the trace: each phrase sent, under its class
    assert set(phrases) == present & set(phrases) and all(phrases.values())
    assert any(len(p) > 1 for p in phrases.values()), phrases  # with reasoning: attribute phrases too
    assert {i.class_name for i in reasoned.instances} <= present  # the hard filter held
    assert reasoned.labels.shape == (160, 200) and reasoned.present
    bare = model.segment(rgb, "voc21", reasoning=False)
    assert bare.instances and not bare.state.alignment
    checked = model.segment(rgb, "voc21", self_check={"enabled": True, "margin_threshold": 1.0, "min_area_pixels": 4})
    assert checked.state.self_check is not None and checked.state.self_check.rounds


def test_a_batch_equals_one_image_at_a_time(sam3_folder, voc):
    segmenter = sam3(sam3_folder, **EVERY_QUERY)
    bank = segmenter.query_bank(prompts(("cat", ["cat"], ["striped"]), ("sofa", ["sofa", "couch"], [None])))
    images = [voc["rgb"][:120, :150], voc["rgb"][100:220, 200:380]]
    batch = segmenter.segment_batch([SegmentJob(rgb, bank) for rgb in images])
    for rgb, together in zip(images, batch):
        alone = segmenter.segment(rgb, bank)
        assert np.array_equal(alone.labels, together.labels)
        assert np.allclose(alone.confidence, together.confidence, atol=1e-5)


def test_the_hard_class_filter_decodes_only_the_present_classes(sam3_folder, voc):
    segmenter = sam3(sam3_folder, **EVERY_QUERY)
    bank = segmenter.query_bank(
        prompts(("cat", ["cat", "kitty"], [None]), ("sofa", ["sofa"], [None]), ("dog", ["dog", "puppy"], ["brown"]))
    )
    rgb = voc["rgb"][:100, :100]
    segmenter.segment(rgb, bank)
    every = segmenter.phrases_decoded
    filtered = segmenter.segment(rgb, bank, class_filter=ClassFilter(present=[1]))
    assert every == 6 and segmenter.phrases_decoded - every == 1  # 6 phrases, then sofa's one
    assert filtered.suppressed == [0, 2] and {i.class_index for i in filtered.instances} == {1}


def test_no_instance_is_an_all_background_map_with_a_stated_note(sam3_folder, voc):
    model = OpenSegR(
        segmenter="sam3",
        model=str(sam3_folder),
        device="cpu",
        lmm="none",
        instance_threshold=1.0,
        semantic_threshold=1.0,
    )
    result = model.segment(voc["rgb"][:80, :80], "voc21")
    assert result.instances == [] and set(np.unique(result.labels)) == {0}  # voc21's background
    (note,) = [f for f in result.state.fallbacks if f.step == "segmentation"]
    assert note.reason == "the segmenter found no instance of any class"


# --------------------------------------------------------------------------- bad models


def _not_sam3(folder: Path) -> str:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "clip"}')
    return "is a clip model, not SAM 3"


def _corrupt(folder: Path) -> str:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "sam3"}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    return "is not a readable safetensors file"


def _pickled_only(folder: Path) -> str:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "sam3"}')
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    return "has no .safetensors weights"


@pytest.mark.parametrize("make", [_not_sam3, _corrupt, _pickled_only])
def test_bad_model_folders_are_one_line_before_any_model_is_built(tmp_path, make):
    words = make(tmp_path / "model")
    with pytest.raises(WeightsError) as caught:
        sam3(tmp_path / "model")
    assert "\n" not in str(caught.value) and words in str(caught.value)


def test_a_missing_folder_and_an_uncached_hub_model_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="SAM 3 model folder not found"):
        sam3(tmp_path / "no" / "such" / "folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError) as caught:
        build_segmenter("sam3", {"model": "facebook/sam3"}, BuildRequest(device="cpu"))
    message = str(caught.value)
    assert "\n" not in message and "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def sam3_segment(folder, *args: str) -> list[str]:
    """``segment`` of the VOC photo with the tiny SAM 3, every query an instance, no LMM."""
    return [
        "segment",
        str(ROOT / "examples" / "voc.jpg"),
        "--no-reasoning",
        "--segmenter",
        "sam3",
        "--segmenter-option",
        f"model={folder}",
        "--segmenter-option",
        "instance_threshold=0",
        *args,
    ]


def test_the_command_line_segments_with_sam3_and_refuses_a_bad_model_in_one_line(sam3_folder, tmp_path):
    done = cli(*sam3_segment(sam3_folder, "--vocab", "voc21", "--precision", "fp32", "--out", str(tmp_path / "out")))
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["segmenter"]["kind"] == "sam3" and saved["instances"]
    bad = cli(
        *sam3_segment(
            sam3_folder,
            "--vocab",
            "voc21",
            "--segmenter-option",
            f"model={tmp_path / 'nothing'}",
            "--out",
            str(tmp_path / "bad"),
        )
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "SAM 3 model folder not found" in bad.stderr
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- instances for people and agents


def test_segment_instances_writes_the_coco_results_file_and_outlines(sam3_folder, tmp_path):
    from PIL import Image

    command = sam3_segment(sam3_folder, "--classes", "cat, sofa", "--segmenter-option", "max_instances=7")
    plain = cli(*command, "--out", str(tmp_path / "plain"))
    drawn = cli(*command, "--instances", "--out", str(tmp_path / "drawn"))
    assert plain.returncode == drawn.returncode == 0, plain.stderr + drawn.stderr
    assert not (tmp_path / "plain" / "instances.json").exists()
    found = json.loads((tmp_path / "drawn" / "instances.json").read_text())
    assert len(found) == 7 and [f["score"] for f in found] == sorted((f["score"] for f in found), reverse=True)
    first = found[0]
    assert first["category_name"] in ("cat", "sofa") and first["category_id"] == ["cat", "sofa"].index(
        first["category_name"]
    )
    x, y, w, h = first["bbox"]
    assert 0 <= x and 0 <= y and x + w <= 500.01 and y + h <= 375.01
    assert decode_rle(first["segmentation"]).shape == (375, 500)
    overlays = [np.asarray(Image.open(tmp_path / out / "overlay.png")) for out in ("plain", "drawn")]
    assert overlays[0].shape == overlays[1].shape and not np.array_equal(*overlays)  # the outlines


def test_a_folder_run_records_its_instances_so_resume_never_mixes_folders(sam3_folder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes((ROOT / "examples" / "voc.jpg").read_bytes())
    command = sam3_segment(sam3_folder, "--classes", "cat")
    command[1] = str(images)
    out = str(tmp_path / "out")
    first = cli(*command, "--instances", "--out", out)
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["outputs"] == {"instances": True}
    assert all((tmp_path / "out" / name / "instances.json").is_file() for name in ("a", "b"))
    plain = cli(*command, "--out", out, "--resume")
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1, plain.stderr
    assert "was segmented with other outputs" in plain.stderr
    again = cli(*command, "--instances", "--out", out, "--resume")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


@pytest.mark.parametrize("engine", [[], ["--engine", "ray"]])
def test_instances_are_refused_in_one_line_for_a_segmenter_without_them(tmp_path, engine):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes((ROOT / "examples" / "voc.jpg").read_bytes())
    done = cli(
        "segment",
        str(images),
        "--classes",
        "cat",
        "--no-reasoning",
        "--instances",
        *engine,
        "--out",
        str(tmp_path / "out"),
        timeout=120,
    )
    words = "--instances needs a segmenter that finds instances (sam3); the dense-clip segmenter"
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_agents_get_instances_on_request_bounded_and_as_rle(sam3_folder, tiny_segmenter):
    import base64

    from openseg_r import SafetyLimits, SegmentationService
    from openseg_r.tools.output import MAX_INSTANCES_RETURNED

    photo = base64.b64encode((ROOT / "examples" / "voc.jpg").read_bytes()).decode()
    model = OpenSegR(
        segmenter="sam3", model=str(sam3_folder), device="cpu", lmm="none", instance_threshold=0.0, max_instances=200
    )
    service = SegmentationService(model, SafetyLimits())
    request = {"image_base64": photo, "vocabulary": "voc21", "reasoning": False}  # 21 classes x 5 queries
    without, _ = service.segment(request)
    output, _ = service.segment(request | {"instances": True})
    assert without.instances is None and output.segmenter == "sam3"
    assert len(output.instances) == MAX_INSTANCES_RETURNED and any("best 50 are returned" in n for n in output.notes)
    assert decode_rle(output.instances[0].mask.model_dump()).shape == (375, 500)
    dense = SegmentationService(OpenSegR(segmenter=tiny_segmenter, lmm="none"), SafetyLimits())
    plain, _ = dense.segment(request | {"instances": True})
    assert plain.instances is None and any("finds no instances" in n for n in plain.notes)


def test_eval_runs_the_semantic_benchmark_with_sam3(sam3_folder, tmp_path, voc):
    """``eval --segmenter sam3`` on a VOC tree of the real photo: counts for every image, and the
    report names the kind (the NACLIP protocol is dense CLIP's, so none is applied)."""
    from PIL import Image

    from openseg_r.evals.datasets import get_dataset
    from openseg_r.evals.runner import run_eval

    base = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    for n, (y, x) in enumerate(((0, 0), (100, 150))):
        Image.fromarray(voc["rgb"][y : y + 160, x : x + 200]).save(base / "JPEGImages" / f"c{n}.jpg")
        Image.fromarray(voc["class_label"][y : y + 160, x : x + 200].astype(np.uint8)).save(
            base / "SegmentationClass" / f"c{n}.png"
        )
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("c0\nc1\n")
    model = OpenSegR(segmenter="sam3", model=str(sam3_folder), device="cpu", lmm="none", instance_threshold=0.0)
    state = run_eval(model, get_dataset("voc21"), tmp_path, tmp_path / "eval", progress=False)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["images"] == 2 and list(state.totals)
    assert json.loads((tmp_path / "eval" / "run.json").read_text())["model"]["kind"] == "sam3"
    assert "segmenter sam3" in (tmp_path / "eval" / "summary.md").read_text()


def test_phrase_embeddings_are_kept_in_the_text_cache_file_between_models(sam3_folder, tmp_path, voc):
    request = BuildRequest(device="cpu", precision="fp32", text_cache=str(tmp_path / "text.sqlite"))
    vocabulary = prompts(("cat", ["cat", "kitty"], ["striped"]), ("sofa", ["sofa"], [None]))
    first = build_segmenter("sam3", {"model": str(sam3_folder), **EVERY_QUERY}, request)
    cold = first.segment(voc["rgb"][:100, :120], first.query_bank(vocabulary))
    second = build_segmenter("sam3", {"model": str(sam3_folder), **EVERY_QUERY}, request)
    warm = second.segment(voc["rgb"][:100, :120], second.query_bank(vocabulary))
    assert (first.phrases_embedded, second.phrases_embedded) == (4, 0)  # the second reads all four
    assert np.array_equal(cold.labels, warm.labels) and np.allclose(cold.confidence, warm.confidence)
    assert second.text_store.hits == 4


def test_the_web_page_lists_and_outlines_the_instances_and_offers_their_file(sam3_folder, voc, tmp_path):
    from openseg_r.tools.web.live import write_downloads
    from openseg_r.tools.web.trace import result_html

    model = OpenSegR(
        segmenter="sam3", model=str(sam3_folder), device="cpu", lmm="none", instance_threshold=0.0, max_instances=6
    )
    result = model.segment(voc["rgb"][:120, :160], ["cat", "sofa"])
    html = result_html(result)
    assert html.count("data-instance=") == 6 and "6 instance(s), outlined on the overlay" in html
    assert result.instances[0].phrase in html
    paths = write_downloads(result, tmp_path / "downloads")
    assert len(json.loads(paths["instances"].read_text())) == 6
    assert not np.array_equal(np.asarray(result.overlay()), np.asarray(result.overlay(outlines=True)))


# --------------------------------------------------------------------------- instance evaluation


@pytest.fixture
def coco_instances(tmp_path) -> Path:
    """The mini benchmark's instance set: the VOC photo's 19 object masks, 20 VOC categories."""
    from make_mini_benchmark import build

    return build(tmp_path / "mini")["coco-instances"]


def test_instance_evaluation_gives_a_perfect_ap_to_the_ground_truth_itself(sam3_folder, coco_instances, voc, tmp_path):
    """COCOeval's path, exact: a segmenter whose instances are the annotations scores AP 1."""
    from openseg_r.evals.instances import run_instance_eval
    from openseg_r.segmenters.base import Instance, SegmentationArrays

    model = OpenSegR(segmenter="sam3", model=str(sam3_folder), device="cpu", lmm="none", batch_size=1)
    names = list(voc["class_names"])

    def oracle(rgb, bank, **_):
        found = [
            Instance(
                class_index=int(label) - 1,  # the vocabulary is the categories 1-20, in id order
                phrase=names[label],
                score=0.9,
                box=(0, 0, 1, 1),
                mask=encode_rle(mask),
            )
            for label, mask in zip(voc["labels"], voc["masks"])
        ]
        zeros = np.zeros(rgb.shape[:2], np.float32)
        return SegmentationArrays(
            labels=np.zeros(rgb.shape[:2], np.int32),
            confidence=zeros,
            runner_up=np.full(rgb.shape[:2], -1, np.int32),
            margin=zeros,
            instances=found,
        )

    model.segmenter.segment = oracle
    summary = run_instance_eval(model, coco_instances, tmp_path / "perfect")
    assert summary["detections"] == len(voc["labels"]) and summary["mask_ap"]["AP"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "perfect" / "summary.json").read_text())["mask_ap"]["AP50"] == pytest.approx(1.0)


def test_eval_coco_instances_from_the_command_line(sam3_folder, coco_instances, tmp_path):
    base = ["eval", "--dataset", "coco-instances", "--root", str(coco_instances), "--no-progress"]
    sam3_options = [
        "--segmenter",
        "sam3",
        "--segmenter-option",
        f"model={sam3_folder}",
        "--segmenter-option",
        "instance_threshold=0",
    ]
    done = cli(*base, *sam3_options, "--out", str(tmp_path / "ap"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "ap" / "summary.json").read_text())
    assert summary["images"] == 1 and summary["detections"] > 0 and 0 <= summary["mask_ap"]["AP"] <= 1
    assert "| AP | AP50 |" in (tmp_path / "ap" / "summary.md").read_text()
    refused = cli(*base, "--out", str(tmp_path / "dense"), timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "the dense-clip segmenter gives a label map only" in refused.stderr and not (tmp_path / "dense").exists()


def test_a_gated_or_forbidden_hub_model_is_one_line(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        raise GatedRepoError.__new__(GatedRepoError)  # as huggingface_hub raises it for a gated repository

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsError) as caught:
        build_segmenter("sam3", {"model": "facebook/sam3"}, BuildRequest(device="cpu"))
    message = str(caught.value)
    assert "\n" not in message and "is gated on the Hugging Face hub" in message and "HF_TOKEN" in message
