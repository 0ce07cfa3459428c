"""Evaluation protocols: NACLIP's per-benchmark settings, applied by `eval` by default,
overridable field by field, and stated in the reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openseg_r.config.options import ModelOptions
from openseg_r.config.presets import PROTOCOLS, protocol_for
from openseg_r.config.settings import Settings
from openseg_r.errors import ConfigError
from openseg_r.segmenters.dense_clip.options import SegmenterConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
ENV = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}

# NACLIP's configs/cfg_*.py and test_all.sh (reduced naclip 5 on): short side, whole image or
# 224/112 windows, prob_thd.
NACLIP_TABLE = {
    "voc21": (336, False, 0.1),
    "voc20": (336, False, 0.0),
    "pc60": (336, True, 0.1),
    "pc59": (336, True, 0.0),
    "coco_object": (336, True, 0.1),
    "coco_stuff171": (336, True, 0.0),
    "ade150": (336, True, 0.0),
    "cityscapes": (560, True, 0.0),
}


@pytest.mark.parametrize("dataset", sorted(NACLIP_TABLE))
def test_each_protocol_holds_naclips_published_settings(dataset):
    protocol = protocol_for(dataset)
    segmenter = SegmenterConfig(**protocol.segmenter_options)
    settings = Settings(**protocol.settings)
    short_side, slide, background = NACLIP_TABLE[dataset]
    assert (segmenter.short_side, segmenter.max_long_side, segmenter.slide) == (short_side, 2048, slide)
    if slide:
        assert (segmenter.crop, segmenter.stride) == (224, 112)
    assert (segmenter.attention, segmenter.gaussian_sigma) == ("naclip", 5.0)
    assert (segmenter.pamr_steps, segmenter.pamr_dilations) == (10, (8, 16))
    assert (settings.templates, settings.score_order, settings.logit_scale) == ("imagenet", "softmax_then_max", 40.0)
    assert settings.background_threshold == background
    assert protocol.vocabulary == dataset
    assert protocol_for(f"naclip-{dataset}") is protocol


def test_protocols_cover_naclips_eight_benchmarks_and_unknown_names_are_one_line():
    assert set(PROTOCOLS) == set(NACLIP_TABLE)
    assert protocol_for("none") is None
    with pytest.raises(ConfigError) as caught:
        protocol_for("imagenet")
    assert "\n" not in str(caught.value)


def test_a_protocol_applies_under_single_overrides():
    options, settings = protocol_for("voc21").apply(ModelOptions(clip_pretrained="none"), Settings(reasoning=False))
    assert options.segmenter_options.slide is False and options.segmenter_options.pamr_steps == 10
    assert options.segmenter_options.clip_pretrained is None  # what it does not set stays
    assert settings.background_threshold == 0.1 and settings.reasoning is False
    assert options.with_overrides(segmenter_options={"pamr_steps": 0}).segmenter_options.slide is False


def _eval(tmp_path, root, out, *extra, tiny):
    config, weights = tiny
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "eval",
            "--dataset",
            "voc21",
            "--root",
            str(root),
            "--out",
            str(tmp_path / out),
            "--clip-model",
            str(config),
            "--clip-pretrained",
            str(weights),
            "--cache",
            "none",
            *map(str, extra),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_mini_benchmark import build

    return build(tmp_path_factory.mktemp("mini"))["voc21"]


def test_eval_applies_and_states_the_datasets_protocol(tmp_path, mini, tiny_model_files):
    done = _eval(tmp_path, mini, "naclip", "--pamr-steps", "2", tiny=tiny_model_files)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "naclip" / "summary.json").read_text())["config"]
    assert config["protocol"]["name"] == "naclip-voc21"
    assert config["model"]["slide"] is False and config["model"]["short_side"] == 336
    assert config["model"]["pamr_steps"] == 2  # a single flag overrides a single field
    assert config["base_settings"]["background_threshold"] == 0.1
    assert config["base_settings"]["templates"] == "imagenet"
    markdown = (tmp_path / "naclip" / "summary.md").read_text()
    assert "Protocol: naclip-voc21" in markdown and "pamr_steps=2" in markdown and "slide=False" in markdown

    plain = _eval(tmp_path, mini, "plain", "--protocol", "none", tiny=tiny_model_files)
    assert plain.returncode == 0, plain.stderr
    config = json.loads((tmp_path / "plain" / "summary.json").read_text())["config"]
    assert config["protocol"] is None and config["model"]["slide"] is True and config["model"]["pamr_steps"] == 0
    assert "Protocol: none" in (tmp_path / "plain" / "summary.md").read_text()

    # resuming a folder with another protocol would mix numbers: refused in one line
    mixed = _eval(tmp_path, mini, "plain", tiny=tiny_model_files)
    assert mixed.returncode == 2 and "other settings" in mixed.stderr and mixed.stderr.count("\n") == 1


def test_eval_with_the_synonym_vocabulary_and_a_wrong_one(tmp_path, mini, tiny_model_files):
    synonyms = _eval(
        tmp_path,
        mini,
        "syn",
        "--protocol",
        "none",
        "--vocab",
        "voc21-syn",
        "--lmm",
        f"scripted:{SCRIPT}",
        tiny=tiny_model_files,
    )
    assert synonyms.returncode == 0, synonyms.stderr
    config = json.loads((tmp_path / "syn" / "summary.json").read_text())["config"]
    assert config["vocabulary"] == "voc21_syn" and config["base_settings"]["reasoning"] is True
    wrong = _eval(tmp_path, mini, "wrong", "--vocab", "pc59", tiny=tiny_model_files)
    assert wrong.returncode == 2 and "59 classes but voc21 has 21" in wrong.stderr


def test_segment_takes_a_protocol(tmp_path, tiny_model_files):
    config, weights = tiny_model_files
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "segment",
            str(ROOT / "examples" / "voc.jpg"),
            "--vocab",
            "voc21",
            "--protocol",
            "voc21",
            "--pamr-steps",
            "0",
            "--clip-model",
            str(config),
            "--clip-pretrained",
            str(weights),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["segmenter"]["slide"] is False and result["segmenter"]["pamr_steps"] == 0
    assert result["settings"]["templates"] == "imagenet" and result["settings"]["background_threshold"] == 0.1
