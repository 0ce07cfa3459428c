"""The segmenter: batched windows, window averaging, text cache, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openseg_r.schemas import ClassPrompts, PromptSet
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig
from openseg_r.segmenters.dense_clip.scoring import ClassFilter


def prompts(names, slots=(None,)):
    return PromptSet(
        templates="vild",
        score_order="max_then_softmax",
        classes=[ClassPrompts(name=n, queries=[n], slots=list(slots), source="bare") for n in names],
    )


def test_batched_windows_equal_one_window_at_a_time(tiny_clip, rng):
    rgb = rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)
    batched = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=96, crop=64, stride=32))
    looped = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=96, crop=64, stride=32, window_batch_size=1))
    bank = batched.query_bank(prompts(["cat", "dog", "tree"]))
    pixels = batched.preprocess(rgb)
    assert torch.allclose(batched.dense_logits(pixels, bank), looped.dense_logits(pixels, bank), atol=1e-5)


def test_overlapping_windows_are_averaged(tiny_clip, rng):
    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=64, crop=64, stride=32))
    bank = seg.query_bank(prompts(["cat", "dog"]))
    pixels = seg.preprocess(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    assert pixels.shape[-2:] == (64, 96)
    canvas = seg.dense_logits(pixels, bank)
    windows = []
    for x1 in (0, 32):
        feats = seg.encoder(pixels[:, :, :, x1 : x1 + 64])
        logits = (feats @ bank.embeddings.T).permute(0, 3, 1, 2)
        windows.append(F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)[0])
    assert torch.allclose(canvas[:, :, :32], windows[0][:, :, :32], atol=1e-5)  # only window 1
    assert torch.allclose(canvas[:, :, 64:], windows[1][:, :, 32:], atol=1e-5)  # only window 2
    assert torch.allclose(canvas[:, :, 32:64], (windows[0][:, :, 32:] + windows[1][:, :, :32]) / 2, atol=1e-5)


def test_single_window_equals_whole_image(tiny_clip, rng):
    rgb = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    slide = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=64, crop=64, stride=32))
    whole = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=64, slide=False))
    bank = slide.query_bank(prompts(["cat", "dog"]))
    pixels = slide.preprocess(rgb)
    assert torch.allclose(slide.dense_logits(pixels, bank), whole.dense_logits(pixels, bank), atol=1e-6)


def test_text_embeddings_are_computed_once(tiny_clip):
    seg = CLIPSegmenter(tiny_clip)
    first = seg.query_bank(prompts(["zebra", "giraffe"]))
    encoded = seg.text.encoded_sentences
    assert encoded == 2 * 14
    second = seg.query_bank(prompts(["zebra", "giraffe"]))
    assert seg.text.encoded_sentences == encoded
    assert torch.equal(first.embeddings, second.embeddings)


def test_text_embedding_is_the_normalised_template_average(tiny_clip):
    from openseg_r.prompts.templates import VILD_TEMPLATES

    seg = CLIPSegmenter(tiny_clip)
    got = seg.text.embed(["red fox"], "vild")[0]
    with torch.no_grad():
        tokens = tiny_clip.tokenizer([t.format("red fox") for t in VILD_TEMPLATES])
        each = F.normalize(tiny_clip.model.encode_text(tokens), dim=-1)
    assert torch.allclose(got, F.normalize(each.mean(0), dim=-1), atol=1e-6)


def test_segment_outputs_and_background_threshold(tiny_segmenter, voc):
    rgb = voc["rgb"]
    bank = tiny_segmenter.query_bank(prompts(["background", "person", "table"]))
    plain = tiny_segmenter.segment(rgb, bank)
    assert plain.labels.shape == rgb.shape[:2] and plain.labels.dtype == np.int32
    assert np.all((plain.confidence >= 0) & (plain.confidence <= 1))
    assert np.all(plain.margin >= 0)
    assert np.all(plain.runner_up != plain.labels)
    everything_low = tiny_segmenter.segment(rgb, bank, background_index=0, background_threshold=1.01)
    assert np.all(everything_low.labels == 0)


def test_hard_filter_removes_absent_classes_from_the_map(tiny_segmenter, voc):
    bank = tiny_segmenter.query_bank(prompts(["person", "table", "cat"]))
    out = tiny_segmenter.segment(voc["rgb"], bank, class_filter=ClassFilter(present=[1], mode="hard"))
    assert set(np.unique(out.labels)) == {1}
    assert out.suppressed == [0, 2]


def test_cut_text_encoding_equals_open_clip_encode_text(tiny_clip):
    from openseg_r.segmenters.dense_clip.text import encode_text

    tokens = tiny_clip.tokenizer(["a photo of a cat.", "There is a large dining table that has plates in the scene."])
    with torch.no_grad():
        assert torch.allclose(encode_text(tiny_clip.model, tokens), tiny_clip.model.encode_text(tokens), atol=1e-5)


def test_image_too_small_for_a_patch_is_a_clear_error(tiny_clip, rng):
    from openseg_r.errors import ConfigError

    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=8))
    with pytest.raises(ConfigError, match="smaller than one 16-pixel patch"):
        seg.preprocess(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def test_extremely_elongated_image_still_segments(tiny_segmenter, rng):
    rgb = rng.integers(0, 255, (40, 4000, 3), dtype=np.uint8)  # resizes to 20 x 2048: one row of windows
    bank = tiny_segmenter.query_bank(prompts(["sky", "road"]))
    assert tiny_segmenter.segment(rgb, bank).labels.shape == (40, 4000)


# ----------------------------------------------------------------------- segment_batch


def _assert_same_arrays(batched, single):
    assert np.array_equal(batched.labels, single.labels)
    assert np.array_equal(batched.runner_up, single.runner_up)
    for name in ("confidence", "margin", "runner_up_confidence"):
        assert np.allclose(getattr(batched, name), getattr(single, name), atol=1e-5), name
    assert batched.suppressed == single.suppressed
    assert batched.background_pixels == single.background_pixels
    assert batched.labels.dtype == np.int32 and batched.confidence.dtype == np.float32


@pytest.mark.parametrize(
    "config",
    [
        dict(short_side=96, crop=64, stride=32, window_batch_size=5),  # forward passes cut across images
        dict(short_side=96, crop=64, stride=32),  # all windows of the batch in one pass
        dict(short_side=80, slide=False),  # whole images, grouped by size
        dict(short_side=96, crop=64, stride=32, pamr_steps=2, pamr_dilations=(1, 2)),
    ],
)
def test_segment_batch_equals_segment_image_by_image(tiny_clip, rng, config):
    from openseg_r.segmenters.base import SegmentJob

    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(**config))
    banks = [
        seg.query_bank(prompts(["background", "cat", "dog", "tree"])),
        seg.query_bank(prompts(["sky", "road"], slots=("red", "blue"))),
    ]
    jobs = [
        SegmentJob(rng.integers(0, 255, (120, 170, 3), dtype=np.uint8), banks[0]),
        SegmentJob(rng.integers(0, 255, (90, 90, 3), dtype=np.uint8), banks[1], logit_scale=20.0),
        SegmentJob(
            rng.integers(0, 255, (150, 100, 3), dtype=np.uint8),
            banks[0],
            class_filter=ClassFilter(present=[1], keep=(0,)),
            background_index=0,
            background_threshold=0.6,
        ),
        SegmentJob(
            rng.integers(0, 255, (120, 170, 3), dtype=np.uint8),
            banks[0],
            class_filter=ClassFilter(present=[2], mode="soft"),
        ),
    ]
    batched = seg.segment_batch(jobs)
    assert len(batched) == len(jobs)
    for job, arrays in zip(jobs, batched):
        single = CLIPSegmenter(tiny_clip, SegmenterConfig(**config)).segment(
            job.rgb,
            job.bank,
            class_filter=job.class_filter,
            logit_scale=job.logit_scale,
            background_index=job.background_index,
            background_threshold=job.background_threshold,
        )
        assert arrays.labels.shape == job.rgb.shape[:2]
        _assert_same_arrays(arrays, single)
    assert batched[2].background_pixels > 0  # the threshold did something: the test can tell
    assert seg.segment_batch([]) == []


def test_segment_batch_reuses_kept_window_features(tiny_clip, rng):
    from openseg_r.segmenters.base import SegmentJob

    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=96, crop=64, stride=32))
    bank = seg.query_bank(prompts(["cat", "dog"]))
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    first = seg.segment_batch([SegmentJob(rgb, bank, image_key=f"k{i}") for i, rgb in enumerate(images)])
    assert seg.encoded_images == 3
    again = seg.segment_batch(
        [SegmentJob(images[1], bank, image_key="k1"), SegmentJob(images[2], bank, image_key="new")]
    )
    assert seg.encoded_images == 4  # k1 was kept, "new" was encoded
    _assert_same_arrays(again[0], first[1])
    _assert_same_arrays(again[1], first[2])


def test_segment_batch_refuses_an_image_too_small_to_encode(tiny_clip, rng):
    from openseg_r.errors import ConfigError
    from openseg_r.segmenters.base import SegmentJob

    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=96, crop=64, stride=32))
    bank = seg.query_bank(prompts(["cat", "dog"]))
    with pytest.raises(ConfigError, match="smaller than one"):
        seg.segment_batch(
            [
                SegmentJob(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), bank),
                SegmentJob(rng.integers(0, 255, (2, 4000, 3), dtype=np.uint8), bank),
            ]
        )


def test_compiled_passes_are_padded_to_a_power_of_two(tiny_clip, rng):
    """One compiled graph per shape: padding keeps the shapes few, and the padding windows
    never reach the results."""
    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=96, crop=64, stride=32, compile=True))
    plain = CLIPSegmenter(tiny_clip, SegmenterConfig(short_side=96, crop=64, stride=32))
    encoder, shapes = plain.encoder, []

    def recording(crops):
        shapes.append(crops.shape[0])
        return encoder(crops)

    recording.patch_size = encoder.patch_size
    seg.encoder = recording  # the eager tower: this test is about the padding, not the compiler
    bank = seg.query_bank(prompts(["cat", "dog"]))
    pixels = seg.preprocess(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))  # 2 x 3 windows
    assert torch.allclose(seg.dense_logits(pixels, bank), plain.dense_logits(pixels, bank), atol=1e-6)
    from openseg_r.segmenters.base import SegmentJob

    images = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(3)]  # 2 x 2 windows each
    seg.segment_batch([SegmentJob(image, bank) for image in images])
    assert shapes == [8, 8, 4]  # 6 padded to 8; then 12 windows in passes of 8 (the CPU default): 8, 4
