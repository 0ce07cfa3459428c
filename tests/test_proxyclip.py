"""The ``proxyclip`` segmenter kind, with tiny random models the tests build and save
(``tests/tiny_vfm.py``: DINO and DINOv2-with-registers transformers folders; conftest's
tiny CLIP): its options and one-line errors, the proxy attention's edge cases, DINOv2's
features against its reference architecture's positional resize, batching, the whole
graph, the command line, agents, and ProxyCLIP's published protocols.
(The numerical parity with the reference code is ``tests/test_proxyclip_parity.py``.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_vfm import save_tiny_dino, save_tiny_dinov2

from openseg_r import OpenSegR
from openseg_r.config.options import ModelOptions
from openseg_r.config.presets import PROXYCLIP_PROTOCOLS, protocol_for, published_protocol
from openseg_r.errors import ConfigError, WeightsError
from openseg_r.segmenters.base import BuildRequest, ClassFilter, SegmentJob
from openseg_r.segmenters.proxyclip.attention import proxy_weights
from openseg_r.segmenters.registry import build_segmenter, describe_kinds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SCRIPT = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory) -> Path:
    return save_tiny_dino(tmp_path_factory.mktemp("vfm") / "dino")


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("vfm") / "dinov2")


def options(tiny_model_files, folder: Path, **extra) -> dict:
    config, weights = tiny_model_files
    return {"clip_model": str(config), "clip_pretrained": str(weights), "vfm_model": str(folder), **extra}


def proxyclip(tiny_model_files, folder: Path, **extra):
    request = BuildRequest(device="cpu", precision="fp32")
    return build_segmenter("proxyclip", options(tiny_model_files, folder, **extra), request)


def model(tiny_model_files, folder: Path, **fields) -> OpenSegR:
    return OpenSegR(
        segmenter="proxyclip", device="cpu", precision="fp32", **options(tiny_model_files, folder), **fields
    )


# --------------------------------------------------------------------------- options and errors


def test_the_kind_is_listed_with_its_vfms_and_defaults():
    kind = next(k for k in describe_kinds() if k["kind"] == "proxyclip")
    assert kind["variants"] == {"vfm": ["dino-vitb8", "dino-vitb16", "dinov2-vitb14-reg"]}
    defaults = {o["name"]: o["default"] for o in kind["options"]}
    assert (defaults["vfm"], defaults["beta"], defaults["gamma"]) == ("dino-vitb8", 1.2, 3.0)
    assert (defaults["crop"], defaults["stride"], defaults["short_side"]) == (336, 112, 336)


def test_an_unknown_vfm_is_one_line_naming_the_valid_ones():
    with pytest.raises(ConfigError) as caught:
        ModelOptions.build(segmenter="proxyclip", vfm="dinov3")
    message = str(caught.value)
    assert "\n" not in message and all(name in message for name in ("dino-vitb8", "dino-vitb16", "dinov2-vitb14-reg"))


def test_missing_or_wrong_vfm_weights_are_one_line_before_clip_is_built(
    tiny_model_files, dinov2_folder, tmp_path, monkeypatch
):
    from openseg_r.segmenters.proxyclip import segmenter as module

    def never(*args, **kwargs):
        raise AssertionError("CLIP was loaded before the VFM's weights were checked")

    monkeypatch.setattr(module, "load_clip", never)
    with pytest.raises(WeightsError) as missing:
        proxyclip(tiny_model_files, tmp_path / "nowhere")
    assert "\n" not in str(missing.value) and "model folder not found" in str(missing.value)
    with pytest.raises(WeightsError) as wrong:
        proxyclip(tiny_model_files, dinov2_folder)  # DINOv2 given where DINO ViT-B/8 is expected
    assert "\n" not in str(wrong.value) and "dinov2_with_registers model, not DINO ViT-B/8" in str(wrong.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(WeightsError) as unweighted:
        proxyclip(tiny_model_files, empty)
    assert "\n" not in str(unweighted.value) and "no .safetensors weights" in str(unweighted.value)


def test_a_window_too_large_for_the_proxy_attention_is_one_line(tiny_model_files, dino_folder, voc):
    segmenter = proxyclip(tiny_model_files, dino_folder, slide=False, max_vfm_tokens=1000)
    bank = segmenter.query_bank(prompts("cat", "sofa"))
    with pytest.raises(ConfigError) as caught:
        segmenter.segment(voc["rgb"], bank)
    message = str(caught.value)
    assert "\n" not in message and "56x42 VFM patches, more than max_vfm_tokens (1000)" in message


# --------------------------------------------------------------------------- the attention and the VFMs


def test_a_flat_window_attends_to_itself_instead_of_giving_nan():
    """Identical features: every similarity is 1, below beta x mean, so the reference would
    mask every entry and its softmax gives NaN; here each patch attends to itself."""
    weights = proxy_weights(torch.ones(1, 8, 3, 3), beta=1.2, gamma=3.0)
    assert torch.equal(weights[0], torch.eye(9))
    varied = proxy_weights(torch.randn(2, 8, 4, 4), beta=1.2, gamma=3.0)
    assert torch.isfinite(varied).all() and torch.allclose(varied.sum(-1), torch.ones(2, 16))


def test_a_uniform_image_segments_without_nan(tiny_model_files, dino_folder):
    result = model(tiny_model_files, dino_folder, lmm="none").segment(
        np.full((200, 300, 3), 128, np.uint8), ["cat", "sofa"]
    )
    assert np.isfinite(result.confidence).all() and result.present


def test_dinov2_features_follow_its_reference_architectures_positional_resize(dinov2_folder):
    """DINOv2's ``*_reg`` hub models resize their positional table bicubically to the grid
    with antialiasing and no offset (``interpolate_offset=0``): computed here from the
    model's own weights, layer by layer, against the features openseg-r reads."""
    import torch.nn.functional as F

    from openseg_r.segmenters.proxyclip.vfm import load_vfm, locate_vfm

    vfm = load_vfm(
        "dinov2-vitb14-reg",
        locate_vfm("dinov2-vitb14-reg", str(dinov2_folder)),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    net = vfm.model
    pixels = torch.randn(2, 3, 168, 224)  # a 12x16 grid: not the trained 8x8
    x = net.embeddings.patch_embeddings(pixels)
    table = net.embeddings.position_embeddings[0]
    patch = table[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(12, 16), mode="bicubic", antialias=True, align_corners=False)
    positions = torch.cat([table[:1], patch.permute(0, 2, 3, 1).reshape(12 * 16, -1)])
    x = torch.cat([net.embeddings.cls_token.expand(2, -1, -1), x], dim=1) + positions
    x = torch.cat([x[:, :1], net.embeddings.register_tokens.expand(2, -1, -1), x[:, 1:]], dim=1)
    for layer in net.encoder.layer:
        x = layer(x)
    expected = net.layernorm(x)[:, 5:].reshape(2, 12, 16, -1).permute(0, 3, 1, 2)
    assert torch.allclose(vfm.features(pixels), expected, atol=1e-5)


def test_dino_reads_its_positional_table_dinos_way(dino_folder):
    """At the trained grid the table is used as it is; elsewhere DINO's ``(g + 0.1) / n``
    resize, which differs from transformers' own ``interpolate_pos_encoding``."""
    from openseg_r.segmenters.proxyclip.vfm import load_vfm, locate_vfm

    vfm = load_vfm(
        "dino-vitb8", locate_vfm("dino-vitb8", str(dino_folder)), device=torch.device("cpu"), dtype=torch.float32
    )
    trained = torch.randn(1, 3, 64, 64)
    assert torch.allclose(
        vfm.features(trained),
        vfm.model(pixel_values=trained).last_hidden_state[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2),
        atol=1e-5,
    )
    other = torch.randn(1, 3, 96, 128)
    theirs = vfm.model(pixel_values=other, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
    ours = vfm.features(other).flatten(2).transpose(1, 2)
    assert ours.shape == theirs.shape and not torch.allclose(ours, theirs, atol=1e-4)


# --------------------------------------------------------------------------- the segmenter in openseg-r


def prompts(*names: str):
    from openseg_r.schemas import ClassPrompts, PromptSet

    return PromptSet(
        templates="imagenet",
        score_order="softmax_then_max",
        classes=[ClassPrompts(name=n, queries=[n], slots=[None], source="bare") for n in names],
    )


@pytest.mark.parametrize("vfm", ["dino-vitb8", "dinov2-vitb14-reg"])
def test_a_batch_equals_one_image_at_a_time(tiny_model_files, dino_folder, dinov2_folder, voc, vfm):
    folder = dino_folder if vfm == "dino-vitb8" else dinov2_folder
    segmenter = proxyclip(tiny_model_files, folder, vfm=vfm, window_batch_size=3)
    bank = segmenter.query_bank(prompts("cat", "sofa", "person", "wall"))
    images = [voc["rgb"], voc["rgb"][40:300, 60:460], voc["rgb"][:150, :200]]
    jobs = [SegmentJob(rgb, bank, ClassFilter(), 40.0, None, 0.0, None) for rgb in images]
    together = segmenter.segment_batch(jobs)
    for rgb, batched in zip(images, together):
        alone = segmenter.segment(rgb, bank)
        assert np.array_equal(alone.labels, batched.labels)
        assert np.allclose(alone.confidence, batched.confidence, atol=1e-5)


def test_the_whole_graph_runs_with_reasoning_the_class_filter_and_the_self_check(tiny_model_files, dino_folder, voc):
    from openseg_r.lmm import ScriptedLMM

    script = dict(SCRIPT, self_check={"choice": "none of these", "confidence": 0.9})
    segmenting = model(
        tiny_model_files, dino_folder, lmm=ScriptedLMM(script), reasoning_cache="none", text_cache="none"
    )
    rgb = voc["rgb"][:200, :260]
    reasoned = segmenting.segment(
        rgb, "voc21", self_check={"enabled": True, "margin_threshold": 1.0, "min_area_pixels": 4}
    )
    record = reasoned.to_json()["segmenter"]
    assert record["kind"] == "proxyclip" and record["vfm"] == "dino-vitb8" and "vfm_weights" in record
    assert reasoned.state.alignment.present  # image reasoning ran, and the filter kept only those
    kept = set(reasoned.state.alignment.present) | {"background"}
    assert set(reasoned.present) <= kept
    assert reasoned.state.self_check is not None and reasoned.state.self_check.rounds
    bare = segmenting.segment(rgb, "voc21", reasoning=False)
    assert bare.labels.shape == (200, 260) and not bare.state.alignment


def test_the_text_cache_file_serves_a_second_process(tiny_model_files, dino_folder, voc, tmp_path):
    config, weights = tiny_model_files
    trained = {"clip_model": str(config), "clip_pretrained": str(weights), "vfm_model": str(dino_folder)}
    request = BuildRequest(device="cpu", precision="fp32", text_cache=str(tmp_path / "text.sqlite"))
    first = build_segmenter("proxyclip", trained, request)
    cold = first.segment(voc["rgb"][:120, :160], first.query_bank(prompts("cat", "sofa")))
    second = build_segmenter("proxyclip", trained, request)
    warm = second.segment(voc["rgb"][:120, :160], second.query_bank(prompts("cat", "sofa")))
    assert np.array_equal(cold.labels, warm.labels) and second.text.store.hits >= 2


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def proxyclip_flags(tiny_model_files, folder: Path) -> list[str]:
    config, weights = tiny_model_files
    flags = ["--segmenter", "proxyclip", "--device", "cpu", "--precision", "fp32"]
    flags += ["--clip-model", str(config), "--clip-pretrained", str(weights)]  # the CLIP flags serve proxyclip too
    return [*flags, "--segmenter-option", f"vfm_model={folder}"]


def test_the_command_line_segments_with_proxyclip_and_refuses_a_bad_vfm_in_one_line(
    tiny_model_files, dino_folder, tmp_path
):
    photo = str(ROOT / "examples" / "voc.jpg")
    flags = proxyclip_flags(tiny_model_files, dino_folder)
    done = cli("segment", photo, "--classes", "cat, sofa", "--no-reasoning", *flags, "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "result.json").read_text())["segmenter"]["kind"] == "proxyclip"
    bad = cli(
        "segment",
        photo,
        "--classes",
        "cat",
        "--no-reasoning",
        *flags,
        "--segmenter-option",
        "vfm=sam-vitb",
        "--out",
        str(tmp_path / "bad"),
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "dino-vitb8" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()


def test_agents_segment_with_proxyclip(tiny_model_files, dino_folder):
    from openseg_r import SafetyLimits, SegmentationService

    service = SegmentationService(model(tiny_model_files, dino_folder, lmm="none"), SafetyLimits())
    photo = base64.b64encode((ROOT / "examples" / "voc.jpg").read_bytes()).decode()
    output, _ = service.segment({"image_base64": photo, "vocabulary": "cat, sofa, wall", "reasoning": False})
    assert output.segmenter == "proxyclip" and output.classes and output.width == 500


# --------------------------------------------------------------------------- published protocols

# the reference's configs/cfg_*.py: (short side, window, prob_thd, class list)
PROXYCLIP_TABLE = {
    "voc21": (336, 336, 0.2, "proxyclip_voc21"),
    "voc20": (336, 336, 0.0, "proxyclip_voc20"),
    "pc60": (336, 336, 0.15, "pc60"),
    "pc59": (336, 336, 0.0, "pc59"),
    "coco_object": (336, 336, 0.25, "proxyclip_coco_object"),
    "coco_stuff171": (336, 336, 0.0, "coco_stuff171"),
    "ade150": (448, 336, 0.0, "ade150"),
    "cityscapes": (448, 224, 0.0, "cityscapes"),
    "pc459": (448, 336, 0.0, "pc459"),
    "ade847": (448, 336, 0.0, "ade847"),
}


@pytest.mark.parametrize("dataset", sorted(PROXYCLIP_TABLE))
def test_each_protocol_holds_proxyclips_published_settings(dataset):
    from openseg_r.config.settings import Settings
    from openseg_r.segmenters.proxyclip.options import ProxyCLIPOptions

    protocol = protocol_for("proxyclip", dataset)
    assert protocol is protocol_for(f"proxyclip-{dataset}") is published_protocol(dataset, "proxyclip")
    segmenter = ProxyCLIPOptions(**protocol.segmenter_options)
    settings = Settings(**protocol.settings)
    short_side, window, background, vocabulary = PROXYCLIP_TABLE[dataset]
    assert (segmenter.short_side, segmenter.max_long_side, segmenter.crop, segmenter.stride) == (
        short_side,
        2048,
        window,
        112,
    )
    assert (segmenter.vfm, segmenter.beta, segmenter.gamma, segmenter.slide, segmenter.pamr_steps) == (
        "dino-vitb8",
        1.2,
        3.0,
        True,
        0,
    )
    assert (settings.templates, settings.score_order, settings.logit_scale) == ("imagenet", "softmax_then_max", 40.0)
    assert settings.background_threshold == background and protocol.vocabulary == vocabulary


def test_protocol_families_by_name_and_their_one_line_errors():
    assert set(PROXYCLIP_PROTOCOLS) == set(PROXYCLIP_TABLE)
    assert protocol_for("naclip", "voc21") is protocol_for("voc21")
    assert published_protocol("voc21", "sam3") is None
    for name, dataset, words in (
        ("proxyclip", None, "the proxyclip protocol is per benchmark"),
        ("proxyclip", "imagenet", "proxyclip published no protocol for imagenet"),
        ("proxyclip-imagenet", None, "no protocol 'proxyclip-imagenet'"),
    ):
        with pytest.raises(ConfigError) as caught:
            protocol_for(name, dataset)
        assert "\n" not in str(caught.value) and words in str(caught.value)


def test_proxyclips_class_lists_differ_from_scLIPs_only_where_its_configs_do():
    from openseg_r.vocab import load_builtin

    ours, theirs = load_builtin("voc21"), load_builtin("proxyclip_voc21")
    assert ours.names == theirs.names  # the same classes, in label order
    assert theirs.classes[15].queries == ["person"] and len(ours.classes[15].queries) == 7
    assert theirs.classes[0].queries == ours.classes[0].queries  # the background's stuff names
    assert len(load_builtin("proxyclip_coco_object").classes[0].queries) == 17


def test_eval_with_the_proxyclip_protocol_uses_its_class_list(tiny_model_files, dino_folder, tmp_path):
    from make_mini_benchmark import build

    root = build(tmp_path / "mini")["voc21"]
    flags = proxyclip_flags(tiny_model_files, dino_folder)
    base = ["eval", "--dataset", "voc21", "--root", str(root), "--no-progress", *flags]
    done = cli(*base, "--protocol", "proxyclip", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "eval" / "summary.json").read_text())["config"]
    assert config["protocol"]["name"] == "proxyclip-voc21" and config["vocabulary"] == "proxyclip_voc21"
    assert config["model"]["kind"] == "proxyclip" and config["base_settings"]["background_threshold"] == 0.2
    refused = cli(*base[: -len(flags)], "--protocol", "proxyclip", "--out", str(tmp_path / "dense"), timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "holds proxyclip settings, not the dense-clip segmenter's" in refused.stderr
