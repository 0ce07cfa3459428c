"""openseg-r against the NACLIP reference code, to 1e-4 in float32.

The goldens (``tests/data/naclip_golden*.npz``) were made once by
``tests/golden/make_naclip_golden.py`` from the reference implementation; this file needs
neither it nor any download: it rebuilds the same random ``ViT-B-16-quickgelu`` weights
from the numpy recipe in ``tests/golden/weights.py`` and runs openseg-r's public pieces on
the same normalised 336x448 input (the VOC photo at NACLIP's inference size, with seeded
noise of +-2 grey levels; normalised with NACLIP's constants, since the resize before it is
mmseg's and not part of this comparison):

- ``DenseCLIPEncoder``: patch features of the first 224x224 window and of the whole image
  (as ``dense_logits`` computes them);
- ``CLIPSegmenter.dense_logits`` (query bank in ``softmax_then_max`` order, so channels are
  queries): sliding-window (224/112) and whole-image (``slide=False``) logits;
- the logits resized to the original 375x500 and refined by ``segment.pamr`` (whole image,
  and in blocks of rows with channel chunks), and ``CLIPSegmenter.segment`` with PAMR on;
- ``TextEmbedder`` with the ImageNet templates against NACLIP's query features.

The goldens keep every 7th pixel row and column (plus the last) and every 16th feature
dimension; the text features are complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from golden.weights import MODEL_NAME, SEED, open_clip_model

from openseg_r.schemas import ClassPrompts, PromptSet
from openseg_r.segmenters.base import ClassFilter
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig
from openseg_r.segmenters.dense_clip import pamr as pamr_module
from openseg_r.segmenters.dense_clip import segmenter as segmenter_module
from openseg_r.segmenters.dense_clip.dense import DenseCLIPEncoder
from openseg_r.segmenters.dense_clip.loading import OPENAI_MEAN, OPENAI_STD, LoadedCLIP
from openseg_r.segmenters.dense_clip.pamr import BandRefiner, pamr
from openseg_r.segmenters.dense_clip.sliding import RowResampler
from openseg_r.segmenters.dense_clip.text import TextEmbedder

DATA = Path(__file__).parent / "data"
TOLERANCE = 1e-4
VARIANTS = ("naclip", "sclip", "vanilla")


@pytest.fixture(scope="module")
def golden():
    files = {"inputs": DATA / "naclip_golden_inputs.npz"}
    files.update({variant: DATA / f"naclip_golden_{variant}.npz" for variant in VARIANTS})
    loaded = {}
    for key, path in files.items():
        with np.load(path) as data:
            loaded[key] = {name: data[name] for name in data.files}
    assert int(loaded["inputs"]["weights_seed"]) == SEED
    return loaded


@pytest.fixture(scope="module")
def clip():
    import open_clip

    model = open_clip_model(SEED)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    return LoadedCLIP(model, tokenizer, MODEL_NAME, None, torch.device("cpu"), torch.float32, OPENAI_MEAN, OPENAI_STD)


@pytest.fixture(scope="module")
def pixels(golden):
    """NACLIP's normalisation of the stored uint8 image: (1, 3, 336, 448) float32."""
    inputs = golden["inputs"]
    normalised = (inputs["image"].astype(np.float32) - inputs["mean"]) / inputs["std"]
    return torch.from_numpy(normalised).permute(2, 0, 1)[None].contiguous()


def prompt_set(names) -> PromptSet:
    return PromptSet(
        templates="imagenet",
        score_order="softmax_then_max",
        classes=[ClassPrompts(name=name, queries=[name], slots=[None], source="bare") for name in names],
    )


def config(variant: str, **changes) -> SegmenterConfig:
    return SegmenterConfig(attention=variant, crop=224, stride=112, gaussian_sigma=5.0, **changes)


def max_diff(got: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(got.shape) == expected.shape, (tuple(got.shape), expected.shape)
    return float((got.float() - torch.from_numpy(expected)).abs().max())


def at(values: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """(K, H, W) -> (K, len(rows), len(cols))."""
    return values[:, torch.from_numpy(rows)][:, :, torch.from_numpy(cols)]


class RecordingEncoder:
    """Wraps a segmenter's ``DenseCLIPEncoder`` and keeps what it returns, so the features
    behind ``dense_logits`` are compared without running the vision tower twice."""

    def __init__(self, encoder: DenseCLIPEncoder) -> None:
        self.encoder, self.outputs = encoder, []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.outputs.append(self.encoder(pixels))
        return self.outputs[-1]


@pytest.fixture(scope="module")
def outputs(clip, golden, pixels):
    """openseg-r's outputs per variant, computed once."""
    inputs = golden["inputs"]
    names = [str(name) for name in inputs["names"]]
    dims = torch.from_numpy(inputs["feature_dims"])
    height, width = (int(v) for v in inputs["original_size"])
    results = {}
    for variant in VARIANTS:
        slide = CLIPSegmenter(clip, config(variant))
        whole = CLIPSegmenter(clip, config(variant, slide=False))
        slide.encoder, whole.encoder = RecordingEncoder(slide.encoder), RecordingEncoder(whole.encoder)
        bank = slide.query_bank(prompt_set(names))
        assert bank.num_channels == len(names)
        slide_logits = slide.dense_logits(pixels, bank)
        whole_logits = whole.dense_logits(pixels, bank)
        (windows,), (image,) = slide.encoder.outputs, whole.encoder.outputs
        assert windows.shape[:3] == (6, 14, 14) and image.shape[:3] == (1, 21, 28)  # window 0 is [0:224, 0:224]
        resized = F.interpolate(slide_logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        guide = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False)[0]
        results[variant] = {
            "window_features": windows[0][..., dims],
            "image_features": image[0][..., dims],
            "slide_logits": slide_logits,
            "whole_logits": whole_logits,
            "resized_logits": resized,
            "pamr_logits": pamr(guide, resized, int(inputs["pamr_steps"]), tuple(inputs["pamr_dilations"])),
        }
    return results


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["window_features", "image_features"])
def test_patch_features_match_reference(outputs, golden, variant, name):
    assert max_diff(outputs[variant][name], golden[variant][name]) <= TOLERANCE


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["slide_logits", "whole_logits"])
def test_logits_match_reference(outputs, golden, variant, name):
    inputs = golden["inputs"]
    got = at(outputs[variant][name], inputs["rows_inference"], inputs["cols_inference"])
    assert max_diff(got, golden[variant][name]) <= TOLERANCE


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["resized_logits", "pamr_logits"])
def test_resized_and_pamr_logits_match_reference(outputs, golden, variant, name):
    inputs = golden["inputs"]
    got = at(outputs[variant][name], inputs["rows_original"], inputs["cols_original"])
    assert max_diff(got, golden[variant][name]) <= TOLERANCE


def test_pamr_in_blocks_and_chunks_equals_whole_image(outputs, golden, pixels):
    """The bounded-memory path (row blocks with halos, one channel per tile, resizing band by
    band as ``segment`` does) equals the whole-image refinement and the reference."""
    inputs = golden["inputs"]
    height, width = (int(v) for v in inputs["original_size"])
    steps, dilations = int(inputs["pamr_steps"]), tuple(int(d) for d in inputs["pamr_dilations"])
    whole = outputs["naclip"]["pamr_logits"]
    refiner = BandRefiner.from_inference(
        outputs["naclip"]["slide_logits"],
        pixels[0],
        height,
        width,
        steps,
        dilations,
        block_rows=190,
        tile_elements=2_200_000,  # two channels per tile
    )
    assert refiner.halo == 160
    banded = torch.cat([refiner.band(start, min(height, start + 20)) for start in range(0, height, 20)], dim=1)
    assert refiner.blocks_computed == 2  # rows [0, 190) and [190, 375); the band [180, 200) takes both
    assert float((banded - whole).abs().max()) <= 1e-6
    got = at(banded, inputs["rows_original"], inputs["cols_original"])
    assert max_diff(got, golden["naclip"]["pamr_logits"]) <= TOLERANCE

    # whole-image inputs, row blocks smaller than the halo, 2 or 3 channels per chunk
    guide = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False)[0]
    resized = outputs["naclip"]["resized_logits"]
    chunked = pamr(guide, resized, steps, dilations, block_rows=150, tile_elements=3_000_000)
    assert float((chunked - whole).abs().max()) <= 1e-6


def test_pamr_block_rows_follow_the_budget():
    """ADE-847 x 3 slots (2,541 channels) on a 512x683 image: a block and its weights fit the budget."""
    refiner = BandRefiner(
        lambda c0, c1, a, b: torch.zeros(c1 - c0, b - a, 683),
        lambda a, b: torch.zeros(3, b - a, 683),
        2541,
        512,
        683,
        10,
        (8, 16),
        block_elements=128_000_000,
    )
    values_per_row = (2541 + 16) * 683
    weights_halo = 16 * 2 * 160 * 683
    assert refiner.block_rows * values_per_row + weights_halo <= 128_000_000
    assert (refiner.block_rows + 1) * values_per_row + weights_halo > 128_000_000


class GoldenInputSegmenter(CLIPSegmenter):
    """Takes the reference's normalised inference-size image instead of resizing the photo
    (mmseg's resize is not openseg-r's), so ``segment`` can be compared end to end."""

    golden_pixels: torch.Tensor

    def preprocess(self, rgb, dtype=None):
        return self.golden_pixels.to(dtype or self.clip.dtype)


def test_segment_with_pamr_matches_reference(clip, golden, pixels, monkeypatch):
    """``segment`` with ``pamr_steps=10``, in one PAMR block and then (same image, features
    reused) in bands of 25 rows, PAMR blocks of 90 rows and two channels per tile."""
    inputs = golden["inputs"]
    height, width = (int(v) for v in inputs["original_size"])
    names = [str(name) for name in inputs["names"]]
    segmenter = GoldenInputSegmenter(clip, config("naclip", pamr_steps=10, pamr_dilations=(8, 16)))
    segmenter.golden_pixels = pixels
    bank = segmenter.query_bank(prompt_set(names))
    rgb = np.zeros((height, width, 3), np.uint8)
    blocks = []
    refine_rows = BandRefiner.refine_rows
    monkeypatch.setattr(BandRefiner, "refine_rows", lambda self, a, b: blocks.append((a, b)) or refine_rows(self, a, b))
    whole = segmenter.segment(rgb, bank, class_filter=ClassFilter(), image_key="golden")
    assert blocks == [(0, height)]
    monkeypatch.setattr(segmenter_module, "BAND_ELEMENTS", 25 * len(names) * width)
    monkeypatch.setattr(pamr_module, "BLOCK_ELEMENTS", 16 * 2 * 160 * width + 90 * (len(names) + 16) * width)
    monkeypatch.setattr(pamr_module, "TILE_ELEMENTS", 2_200_000)
    banded = segmenter.segment(rgb, bank, class_filter=ClassFilter(), image_key="golden")
    assert segmenter.encoded_images == 1
    assert blocks[1:] == [(0, 90), (90, 180), (180, 270), (270, 360), (360, 375)]
    assert np.array_equal(whole.labels, banded.labels)
    assert np.abs(whole.confidence - banded.confidence).max() <= 1e-5

    rows, cols = inputs["rows_original"], inputs["cols_original"]
    probs = torch.softmax(40 * torch.from_numpy(golden["naclip"]["pamr_logits"]), dim=0)
    top = probs.topk(2, dim=0)
    confident = (top.values[0] - top.values[1] > 1e-3).numpy()
    assert confident.mean() > 0.9
    for arrays in (whole, banded):
        labels = arrays.labels[np.ix_(rows, cols)]
        assert (labels == top.indices[0].numpy())[confident].all()
        assert np.abs(arrays.confidence[np.ix_(rows, cols)] - top.values[0].numpy()).max() <= 40 * TOLERANCE


def test_text_embeddings_match_reference(clip, golden):
    from openseg_r.prompts.templates import templates_for

    inputs = golden["inputs"]
    assert list(templates_for("imagenet")) == [str(t) for t in inputs["templates"]]
    names = [str(name) for name in inputs["names"]]
    got = TextEmbedder(clip).embed(names, "imagenet")
    assert max_diff(got, inputs["text_features"]) <= TOLERANCE


def test_golden_catches_a_plain_positional_resize(clip, golden, pixels):
    """The goldens are sensitive to NACLIP's ``(g + 0.1) / n`` positional resize: resizing to
    the grid size instead (``size=grid``) moves the features by far more than the tolerance."""
    encoder = DenseCLIPEncoder(clip.model, "naclip")
    pos = clip.model.visual.positional_embedding.float()
    grid = encoder.grid_for(*pixels.shape[-2:])
    patch = pos[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
    encoder._pos_cache[grid] = torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])
    dims = torch.from_numpy(golden["inputs"]["feature_dims"])
    assert max_diff(encoder(pixels)[0][..., dims], golden["naclip"]["image_features"]) > 10 * TOLERANCE


def test_row_resampler_matches_interpolate(outputs):
    logits = outputs["vanilla"]["slide_logits"]
    for size in [(375, 500), (93, 61), (700, 900)]:
        expected = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        resampler = RowResampler(logits, *size)  # in bands: the whole map is F.interpolate itself
        bands = torch.cat([resampler.band(s, min(size[0], s + 97)) for s in range(0, size[0], 97)], dim=1)
        assert float((bands - expected).abs().max()) <= 1e-6
