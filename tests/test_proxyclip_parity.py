"""openseg-r's ProxyCLIP against the reference code (github mc-lan/ProxyCLIP), to 1e-4 in float32.

``tests/data/proxyclip_golden.npz`` was made once by ``tests/golden/make_proxyclip_golden.py``
from the reference's own vision tower (its open_clip fork: ``forward`` with ``ex_feats``,
``custom_attn``, its positional resize), DINO's own ``VisionTransformer`` and the lifted
``forward_feature``/``forward_slide``. This file needs neither the reference nor a
download: it rebuilds the same random weights from numpy (``golden/weights.py`` for CLIP,
``golden/dino_weights.py`` for DINO ViT-B/8 at 2 blocks), saves DINO as a transformers
folder, as ``facebook/dino-vitb8`` is on the hub, and loads it through openseg-r's own
VFM loader. Compared:

- the VFM's patch features of the first 336x336 window (DINO's positional resize to 42x42);
- the proxy-attention features of that window (CLIP's last block on DINO's similarities);
- the sliding-window logits (336/112) of the 336x448 image, and resized to 375x500;
- the sliding-window logits of a 300x420 crop, whose windows are padded to 336x336;
- the text side (80 ImageNet templates) against the reference's query features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from golden.dino_weights import DINO_SEED, save_transformers_dino
from golden.weights import MODEL_NAME, SEED, open_clip_model

from openseg_r.segmenters.dense_clip.loading import OPENAI_MEAN, OPENAI_STD, LoadedCLIP
from openseg_r.segmenters.dense_clip.scoring import QueryBank
from openseg_r.segmenters.dense_clip.sliding import RowResampler
from openseg_r.segmenters.dense_clip.text import TextEmbedder
from openseg_r.segmenters.proxyclip.options import ProxyCLIPOptions
from openseg_r.segmenters.proxyclip.segmenter import ProxyCLIPSegmenter
from openseg_r.segmenters.proxyclip.vfm import load_vfm, locate_vfm

DATA = Path(__file__).parent / "data"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def golden() -> dict:
    with np.load(DATA / "proxyclip_golden.npz") as data:
        loaded = {name: data[name] for name in data.files}
    assert (int(loaded["weights_seed"]), int(loaded["dino_seed"])) == (SEED, DINO_SEED)
    return loaded


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> ProxyCLIPSegmenter:
    import open_clip

    clip = LoadedCLIP(
        open_clip_model(SEED),
        open_clip.get_tokenizer(MODEL_NAME),
        MODEL_NAME,
        None,
        torch.device("cpu"),
        torch.float32,
        OPENAI_MEAN,
        OPENAI_STD,
    )
    folder = save_transformers_dino(tmp_path_factory.mktemp("dino") / "dino-vitb8")
    vfm = load_vfm("dino-vitb8", locate_vfm("dino-vitb8", str(folder)), device=torch.device("cpu"), dtype=torch.float32)
    return ProxyCLIPSegmenter(clip, vfm, ProxyCLIPOptions(vfm_model=str(folder)))


@pytest.fixture(scope="module")
def pixels(golden) -> torch.Tensor:
    """The reference's normalisation of the NACLIP goldens' 336x448 image: (1, 3, 336, 448)."""
    with np.load(DATA / "naclip_golden_inputs.npz") as inputs:
        image = inputs["image"]
    normalised = (image.astype(np.float32) - golden["mean"]) / golden["std"]
    return torch.from_numpy(normalised).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def bank(golden) -> QueryBank:
    """The reference's query features, one channel per name (its softmax-then-max order)."""
    count = len(golden["names"])
    return QueryBank(
        embeddings=torch.from_numpy(golden["query_features"]),
        query_channel=torch.arange(count),
        channel_class=torch.arange(count),
        channel_slot=torch.zeros(count, dtype=torch.long),
        num_classes=count,
        num_slots=1,
    )


def max_diff(got: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(got.shape) == expected.shape, (tuple(got.shape), expected.shape)
    return float((got.float() - torch.from_numpy(expected)).abs().max())


def at(values: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    return values[:, torch.from_numpy(rows)][:, :, torch.from_numpy(cols)]


def test_vfm_features_match_reference(segmenter, pixels, golden):
    features = segmenter.encoder.vfm_features(pixels[:, :, :336, :336])
    assert features.shape == (1, 768, 42, 42)
    assert max_diff(features[0, ::32], golden["vfm_first_window"]) <= TOLERANCE


def test_proxy_attention_features_match_reference(segmenter, pixels, golden):
    features = segmenter.encoder(pixels[:, :, :336, :336])
    assert features.shape == (1, 42, 42, 512)
    assert max_diff(features[0].reshape(42 * 42, 512)[:, ::32], golden["features_first_window"]) <= TOLERANCE


def test_sliding_window_logits_match_reference_before_and_after_the_resize(segmenter, pixels, bank, golden):
    logits = segmenter.dense_logits(pixels, bank)
    assert max_diff(at(logits, golden["rows"], golden["cols"]), golden["slide_logits"]) <= TOLERANCE
    resized = RowResampler(logits, 375, 500).band(0, 375)
    assert max_diff(at(resized, golden["orig_rows"], golden["orig_cols"]), golden["resized_logits"]) <= TOLERANCE


def test_padded_windows_match_reference(segmenter, pixels, bank, golden):
    """A 300x420 image: its 300x336 windows are padded to 336x336 and the scores cut back."""
    assert segmenter.encoder.window_padding(300, 336) == (0, 0, 18, 18)
    logits = segmenter.dense_logits(pixels[:, :, :300, :420].contiguous(), bank)
    assert max_diff(at(logits, golden["crop_rows"], golden["crop_cols"]), golden["crop_slide_logits"]) <= TOLERANCE


def test_text_embeddings_match_reference(segmenter, golden):
    names = [str(name) for name in golden["names"]]
    assert max_diff(TextEmbedder(segmenter.clip).embed(names, "imagenet"), golden["query_features"]) <= TOLERANCE


def test_golden_catches_another_beta(segmenter, pixels, golden):
    """The goldens are sensitive to the proxy attention's constants: beta 1.0 instead of 1.2
    moves the features by far more than the tolerance."""
    encoder = segmenter.encoder
    try:
        encoder.beta = 1.0
        features = encoder(pixels[:, :, :336, :336])
    finally:
        encoder.beta = 1.2
    assert max_diff(features[0].reshape(42 * 42, 512)[:, ::32], golden["features_first_window"]) > 10 * TOLERANCE
