"""Weights are loaded the open_clip way; every failure is a clear WeightsError/ConfigError."""

from __future__ import annotations

import json
import shutil

import open_clip
import pytest
import torch

from openseg_r.errors import ConfigError, WeightsError
from openseg_r.segment.loading import load_clip, resolve_dtype


def test_weights_file_round_trip(tiny_model_files, tiny_clip):
    config, weights = tiny_model_files
    saved = torch.load(weights)
    loaded = load_clip(str(config), str(weights), device="cpu")
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert loaded.dtype == torch.float32 and loaded.identity.endswith(str(weights))


def test_local_dir_schema(tiny_model_files, tmp_path):
    config, weights = tiny_model_files
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": json.loads(config.read_text()), "preprocess_cfg": {}})
    )
    shutil.copy(weights, folder / "open_clip_pytorch_model.bin")
    loaded = load_clip(f"local-dir:{folder}", None, device="cpu")
    assert torch.equal(loaded.model.visual.proj, torch.load(weights)["visual.proj"])


def test_missing_weights_file(tiny_model_files, tmp_path):
    config, _ = tiny_model_files
    with pytest.raises(WeightsError, match="not found"):
        load_clip(str(config), str(tmp_path / "missing.pt"))


def test_weights_of_another_architecture(tiny_model_files, tmp_path):
    config, _ = tiny_model_files
    other = json.loads(config.read_text())
    other["vision_cfg"]["width"] = 96
    other_config = tmp_path / "tiny-wide.json"
    other_config.write_text(json.dumps(other))
    open_clip.add_model_config(other_config)
    wide = tmp_path / "wide.pt"
    torch.save(open_clip.create_model("tiny-wide").state_dict(), wide)
    with pytest.raises(WeightsError, match="do not match"):
        load_clip(str(config), str(wide))


def test_corrupt_weights_file(tiny_model_files, tmp_path):
    config, _ = tiny_model_files
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError):
        load_clip(str(config), str(bad))


def test_pretrained_tag_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="ViT-B-16|openai"):
        load_clip("ViT-B-16", "openai")


def test_unknown_model_and_bad_settings():
    with pytest.raises(ConfigError, match="unknown CLIP model"):
        load_clip("ViT-Z-99", None)
    with pytest.raises(WeightsError, match="model folder not found"):
        load_clip("local-dir:/nonexistent/folder", None)
    with pytest.raises(ConfigError, match="precision"):
        resolve_dtype("fp8", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("fp32", torch.device("cuda")) == torch.float32


def test_openai_weights_run_with_quick_gelu(monkeypatch):
    """open_clip only warns when OpenAI's QuickGELU weights meet a GELU config; the loader
    asks for QuickGELU from the tag's own config, and leaves other weights alone."""
    import open_clip

    from openseg_r.errors import WeightsError
    from openseg_r.segment.loading import load_clip

    seen = []

    def create_model(name, pretrained=None, device="cpu", force_quick_gelu=False):
        seen.append((name, pretrained, force_quick_gelu))
        raise OSError("no network in this test")

    monkeypatch.setattr(open_clip, "create_model", create_model)
    for pretrained in ("openai", "laion2b_s34b_b88k"):
        with pytest.raises(WeightsError):
            load_clip("ViT-B-16", pretrained, device="cpu")
    assert seen == [("ViT-B-16", "openai", True), ("ViT-B-16", "laion2b_s34b_b88k", False)]
