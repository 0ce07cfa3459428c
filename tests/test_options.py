"""One recipe (ModelOptions), one builder (OpenSegR.from_options), one settings-merge rule,
one cache rule, and defaults written once: every entry point goes through them."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from openseg_r import OpenSegR
from openseg_r._support.cache import (
    MemoryReasoningCache,
    SQLiteReasoningCache,
    default_cache_path,
    open_reasoning_cache,
)
from openseg_r.cli import build_parser, main
from openseg_r.cli.options import model_options, settings_overrides
from openseg_r.config.options import ModelOptions
from openseg_r.config.settings import SelfCheckSettings, Settings, merged_settings
from openseg_r.errors import ConfigError
from openseg_r.lmm import ScriptedLMM
from openseg_r.runs import RunsDB
from openseg_r.segmenters.dense_clip.options import SegmenterConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


# --------------------------------------------------------------------------- settings merge


def test_a_per_call_self_check_override_keeps_the_constructor_top_k(tiny_segmenter, voc):
    settings = Settings(self_check=SelfCheckSettings(top_k=5, rounds=1))
    model = OpenSegR(segmenter=tiny_segmenter, lmm=ScriptedLMM(json.loads(SCRIPT.read_text())), settings=settings)
    result = model.segment(voc["rgb"][:96, :96], "voc21", self_check={"enabled": True})
    check = result.state.settings.self_check
    assert check.enabled and check.top_k == 5 and check.rounds == 1


def test_the_merge_rule_merges_dicts_and_replaces_everything_else():
    base = Settings(class_filter="soft", self_check=SelfCheckSettings(top_k=5, margin_threshold=0.3))
    merged = merged_settings(base, {"self_check": {"enabled": True}, "n_attributes": 2})
    assert (merged.class_filter, merged.n_attributes) == ("soft", 2)
    assert merged.self_check.enabled and merged.self_check.top_k == 5 and merged.self_check.margin_threshold == 0.3
    replaced = merged_settings(base, {"self_check": SelfCheckSettings(enabled=True)})
    assert replaced.self_check.top_k == SelfCheckSettings().top_k
    assert merged_settings(base, {}) == base


def test_a_bad_setting_is_one_line():
    with pytest.raises(ConfigError) as caught:
        merged_settings(Settings(), {"self_check": {"top_k": -1}, "class_filter": "maybe"})
    assert "\n" not in str(caught.value) and "self_check.top_k" in str(caught.value)


# --------------------------------------------------------------------------- ModelOptions


def test_none_means_the_default_and_none_as_text_means_random_weights_or_memory():
    options = ModelOptions.build(
        clip_model=None, clip_pretrained="None", reasoning_cache="none", segmenter_options={"crop": 96, "stride": None}
    )
    assert (
        options.segmenter_options.clip_model == ModelOptions().segmenter_options.clip_model
        and options.segmenter_options.clip_pretrained is None
    )
    assert options.reasoning_cache is None
    assert options.segmenter_options.inference() == SegmenterConfig(crop=96)
    # an override keeps what was set, random weights included
    assert (
        options.with_overrides(device="cpu", segmenter_options={"attention": "sclip"}).segmenter_options.clip_pretrained
        is None
    )


@pytest.mark.parametrize(
    "values",
    [
        {"precision": "fp8"},
        {"segmenter_options": {"crop": 0}},
        {"colour": "red"},
        {"segmenter_options": {"attention": "magic"}},
    ],
)
def test_bad_model_options_are_one_line(values):
    with pytest.raises(ConfigError) as caught:
        ModelOptions.build(**values)
    assert "\n" not in str(caught.value)


def test_options_from_the_environment():
    options = ModelOptions.from_environment(
        {
            "OPENSEG_R_CLIP_MODEL": "ViT-L-14",
            "OPENSEG_R_CLIP_PRETRAINED": "none",
            "OPENSEG_R_DEVICE": "cpu",
            "OPENSEG_R_ATTENTION": "sclip",
            "OPENSEG_R_CACHE": "/tmp/x.sqlite",
            "OPENSEG_R_PRECISION": "",
        }
    )
    assert (options.segmenter_options.clip_model, options.segmenter_options.clip_pretrained, options.device) == (
        "ViT-L-14",
        None,
        "cpu",
    )
    assert options.segmenter_options.attention == "sclip" and options.reasoning_cache == "/tmp/x.sqlite"
    assert options.precision == ModelOptions().precision
    assert ModelOptions.from_environment({}) == ModelOptions()


def test_throughput_options_from_the_environment():
    options = ModelOptions.from_environment(
        {
            "OPENSEG_R_BATCH_SIZE": "16",
            "OPENSEG_R_BATCH_WAIT_MS": "2.5",
            "OPENSEG_R_LMM_CONCURRENCY": "32",
            "OPENSEG_R_TEXT_CACHE": "none",
        }
    )
    assert (options.batch_size, options.batch_wait_ms, options.lmm_concurrency) == (16, 2.5, 32)
    assert options.text_cache is None
    with pytest.raises(ConfigError, match="batch_size") as caught:
        ModelOptions.from_environment({"OPENSEG_R_BATCH_SIZE": "lots"})
    assert "\n" not in str(caught.value)


def test_recorded_options_round_trip_and_leave_out_where_files_go():
    options = ModelOptions.build(
        clip_pretrained="none",
        lmm="scripted:x.json",
        runs_db="runs.sqlite",
        lmm_record="calls.jsonl",
        segmenter_options={"slide": False},
    )
    recorded = options.recorded()
    assert "runs_db" not in recorded and "lmm_record" not in recorded
    assert ModelOptions.from_recorded(json.loads(json.dumps(recorded))) == options.model_copy(
        update={"runs_db": None, "lmm_record": None}
    )


FIRST_FORMAT = {
    "clip_model": "tiny.json",
    "clip_pretrained": None,
    "device": None,
    "precision": "auto",
    "lmm": "scripted",
    "segmenter_config": {
        "attention": "naclip",
        "short_side": 64,
        "max_long_side": 2048,
        "crop": 32,
        "stride": 16,
        "slide": True,
        "window_batch_size": None,
        "gaussian_sigma": 5.0,
    },
}


def test_options_recorded_before_model_options_still_read():
    options = ModelOptions.from_recorded(FIRST_FORMAT)
    assert options.segmenter_options.clip_model == "tiny.json" and options.segmenter_options.clip_pretrained is None
    assert options.segmenter_options.short_side == 64 and options.segmenter_options.crop == 32
    assert options.lmm == "none"  # a backend's bare name is not a spec: no guessing
    assert ModelOptions.from_recorded(FIRST_FORMAT | {"lmm": "scripted:a.json"}).lmm == "scripted:a.json"


@pytest.mark.parametrize(
    "stored", [{}, {"format": 99}, FIRST_FORMAT | {"mystery": 1}, {"format": 2, "clip_model": 5, "precision": "fp8"}]
)
def test_unreadable_recorded_options_are_a_clear_error(stored):
    with pytest.raises(ConfigError) as caught:
        ModelOptions.from_recorded(stored)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- the cache rule


def test_one_cache_rule(tmp_path):
    path = tmp_path / "reasoning.sqlite"
    assert isinstance(open_reasoning_cache(str(path), has_lmm=False), MemoryReasoningCache)
    assert not path.exists()  # without an LMM nothing is asked: no file
    assert type(open_reasoning_cache(None, has_lmm=True)) is MemoryReasoningCache
    assert open_reasoning_cache(str(path), has_lmm=True).path == path
    user = open_reasoning_cache("user", has_lmm=True)
    assert isinstance(user, SQLiteReasoningCache) and user.path == default_cache_path()
    own = MemoryReasoningCache()
    assert open_reasoning_cache(own, has_lmm=False) is own


# --------------------------------------------------------------------------- the command line


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_an_unset_flag_is_none_and_takes_the_models_default():
    args = _parse("segment", "photo.jpg", "--classes", "cat", "--out", "out")
    assert model_options(args) == ModelOptions()
    assert settings_overrides(args) == {}
    args = _parse(
        "segment",
        "photo.jpg",
        "--classes",
        "cat",
        "--out",
        "out",
        "--crop",
        "96",
        "--no-slide",
        "--self-check-k",
        "4",
        "--class-filter",
        "soft",
        "--cache",
        "none",
    )
    assert model_options(args).segmenter_options.inference() == SegmenterConfig(crop=96, slide=False)
    assert model_options(args).reasoning_cache is None
    assert settings_overrides(args) == {"class_filter": "soft", "self_check": {"top_k": 4}}


def test_help_texts_show_the_models_defaults():
    segment = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "segment")[1]
    shown = {}
    for action in segment._actions:
        found = re.search(r"\(default: ([^)]+)\)$", action.help or "")
        if found and action.option_strings:
            shown[action.option_strings[0].lstrip("-")] = found.group(1)
    expected = {
        "crop": SegmenterConfig().crop,
        "stride": SegmenterConfig().stride,
        "short-side": SegmenterConfig().short_side,
        "n-attributes": Settings().n_attributes,
        "background-threshold": Settings().background_threshold,
        "self-check-k": SelfCheckSettings().top_k,
        "self-check-margin": SelfCheckSettings().margin_threshold,
        "clip-model": ModelOptions().segmenter_options.clip_model,
        "max-pixels": ModelOptions().max_pixels,
        "templates": Settings().templates,
        "attention": SegmenterConfig().attention,
    }
    assert {flag: shown.get(flag) for flag in expected} == {flag: str(value) for flag, value in expected.items()}


class Built(Exception):
    pass


@pytest.fixture
def builds(monkeypatch):
    """Every call to the one builder, which then stops the command (a one-line error)."""
    calls = []

    def from_options(cls, options=None, **objects):
        calls.append((options, objects))
        raise ConfigError("stopped at the builder")

    monkeypatch.setattr(OpenSegR, "from_options", classmethod(from_options))
    return calls


def test_segment_ends_at_the_builder(builds, tmp_path, voc, capsys):
    from PIL import Image

    Image.fromarray(voc["rgb"]).save(tmp_path / "photo.png")
    code = main(
        [
            "segment",
            str(tmp_path / "photo.png"),
            "--classes",
            "cat, dog",
            "--out",
            str(tmp_path / "out"),
            "--clip-pretrained",
            "none",
            "--crop",
            "96",
            "--lmm",
            f"scripted:{SCRIPT}",
            "--class-filter",
            "soft",
        ]
    )
    assert code == 2 and "stopped at the builder" in capsys.readouterr().err
    ((options, objects),) = builds
    assert options.segmenter_options.clip_pretrained is None and options.segmenter_options.crop == 96
    assert options.lmm == f"scripted:{SCRIPT}" and options.reasoning_cache == "user"
    assert objects["settings"].class_filter == "soft" and objects["settings"].reasoning


def test_eval_and_serve_end_at_the_builder(builds, tmp_path, capsys):
    from make_mini_benchmark import build

    roots = build(tmp_path / "mini")
    assert (
        main(
            [
                "eval",
                "--dataset",
                "voc21",
                "--root",
                str(roots["voc21"]),
                "--out",
                str(tmp_path / "eval"),
                "--clip-pretrained",
                "none",
                "--attention",
                "sclip",
                "--no-progress",
            ]
        )
        == 2
    )
    assert main(["serve", "mcp", "--clip-pretrained", "none", "--max-pixels", "1000000", "--precision", "fp32"]) == 2
    (evaluated, _), (served, _) = builds
    assert evaluated.segmenter_options.attention == "sclip" and evaluated.segmenter_options.clip_pretrained is None
    assert served.max_pixels == 1_000_000 and served.precision == "fp32"


def test_the_langgraph_app_ends_at_the_builder(builds, monkeypatch):
    from openseg_r.tools import langgraph_app

    monkeypatch.setenv("OPENSEG_R_CLIP_PRETRAINED", "none")
    monkeypatch.setenv("OPENSEG_R_ATTENTION", "clearclip")
    langgraph_app.service_from_environment.cache_clear()
    with pytest.raises(ConfigError, match="stopped at the builder"):
        langgraph_app.service_from_environment()
    langgraph_app.service_from_environment.cache_clear()
    ((options, _),) = builds
    assert options.segmenter_options.clip_pretrained is None and options.segmenter_options.attention == "clearclip"


@pytest.fixture
def recorded_run(tmp_path, tiny_segmenter, voc):
    db = RunsDB(tmp_path / "runs.sqlite")
    lmm = ScriptedLMM(json.loads(SCRIPT.read_text()))
    result = OpenSegR(segmenter=tiny_segmenter, lmm=lmm, runs_db=db).segment(voc["rgb"][:120, :160], "voc21")
    db.close()
    return tmp_path / "runs.sqlite", result.run_id


def _set_recorded_options(db_path, run_id, options: dict) -> None:
    with sqlite3.connect(db_path) as connection:
        connection.execute("UPDATE openseg_runs SET options = ? WHERE run_id = ?", (json.dumps(options), run_id))


def test_a_run_stores_its_model_options(recorded_run, tiny_segmenter):
    db_path, run_id = recorded_run
    db = RunsDB(db_path)
    stored = db.get_run(run_id).options
    db.close()
    options = ModelOptions.from_recorded(stored)
    assert stored["format"] == 3 and stored["segmenter"] == "dense-clip"
    assert options.segmenter_options.inference() == tiny_segmenter.config
    assert options.segmenter_options.clip_pretrained == tiny_segmenter.clip.pretrained
    assert options.lmm == "none"  # a backend object has no spec to rebuild it from


def test_replay_ends_at_the_builder_with_the_recorded_options(builds, recorded_run, capsys):
    db_path, run_id = recorded_run
    code = main(["runs", "--runs-db", str(db_path), "replay", run_id, "--from", "segmentation", "--device", "cpu"])
    assert code == 2
    ((options, objects),) = builds
    assert options.device == "cpu" and options.segmenter_options.crop == SegmenterConfig().crop
    assert isinstance(objects["runs_db"], RunsDB)


def test_a_run_recorded_in_the_first_format_still_replays(recorded_run, tiny_model_files, tmp_path, capsys):
    db_path, run_id = recorded_run
    config, weights = tiny_model_files
    first = FIRST_FORMAT | {
        "clip_model": str(config),
        "clip_pretrained": str(weights),
        "segmenter_config": SegmenterConfig().model_dump(),
    }
    _set_recorded_options(db_path, run_id, first)
    code = main(
        [
            "runs",
            "--runs-db",
            str(db_path),
            "replay",
            run_id,
            "--from",
            "segmentation",
            "--set",
            "class_filter=soft",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["settings"]["class_filter"] == "soft"
    labels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "out" / "labels.png"))
    assert labels.shape == (120, 160)


def test_a_run_with_unreadable_options_fails_in_one_line(recorded_run, capsys):
    db_path, run_id = recorded_run
    _set_recorded_options(db_path, run_id, {"clip_model": 7, "segmenter_config": "??", "mystery": True})
    code = main(["runs", "--runs-db", str(db_path), "replay", run_id, "--from", "segmentation"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "recorded model options" in err


def test_the_readme_options_example_builds_with_a_given_segmenter(tmp_path):
    from test_architecture import BandSegmenter

    options = ModelOptions(
        clip_model="ViT-B-16",
        clip_pretrained="openai",
        lmm=f"scripted:{SCRIPT}",
        reasoning_cache=str(tmp_path / "reasoning.sqlite"),
        segmenter_options={"attention": "sclip", "crop": 336, "stride": 168},
    )
    assert options.segmenter_options.inference() == SegmenterConfig(attention="sclip", crop=336, stride=168)
    model = OpenSegR.from_options(options, segmenter=BandSegmenter())
    assert isinstance(model.reasoning_cache, SQLiteReasoningCache)
    assert model.lmm.model_id and model.settings.reasoning
    assert model.describe_segmenter() == {"kind": "unregistered:BandSegmenter", "segmenter": "bands"}
    # a segmenter object no registry names is recorded as what it is, never as the dense CLIP it is not
    recorded = model.recorded_options()
    assert recorded["segmenter"] == "unregistered:BandSegmenter" and recorded["segmenter_options"] == {
        "segmenter": "bands"
    }
