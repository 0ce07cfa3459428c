"""Prompt composition and scoring against hand computations (docs/design.md §1.4-1.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openseg_r.segment.scoring import apply_class_filter, build_query_bank
from openseg_r.segment.sliding import RowResampler, resize_shape, window_boxes
from openseg_r.segmenter_io import ClassFilter
from openseg_r.state import ClassPrompts, PromptSet


def unit(*values):
    vector = torch.tensor(values, dtype=torch.float32)
    return vector / vector.norm()


class TableEmbedder:
    """Phrase -> a fixed vector, so the expected scores can be computed by hand."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, phrases, template_set):
        self.calls.append((list(phrases), template_set))
        return torch.stack([self.table[p] for p in phrases])


PROMPTS = PromptSet(
    templates="vild",
    score_order="max_then_softmax",
    classes=[
        ClassPrompts(name="sofa", queries=["sofa", "couch"], slots=["cushions", None], source="generic"),
        ClassPrompts(name="chair", queries=["chair"], slots=["legs", None], source="generic"),
    ],
)
TABLE = {
    "sofa that has cushions": unit(1, 0, 0),
    "sofa": unit(1, 1, 0),
    "couch that has cushions": unit(0, 1, 0),
    "couch": unit(0, 0, 1),
    "chair that has legs": unit(1, 0, 1),
    "chair": unit(0, 1, 1),
}


def softmax(values, scale):
    values = np.asarray(values, dtype=np.float64) * scale
    e = np.exp(values - values.max())
    return e / e.sum()


def test_phrases_follow_the_design_template():
    assert PROMPTS.classes[0].phrases() == [["sofa that has cushions", "sofa"], ["couch that has cushions", "couch"]]


def test_max_over_synonyms_then_softmax_per_slot_then_mean():
    embedder = TableEmbedder(TABLE)
    bank = build_query_bank(PROMPTS, embedder)
    feature = unit(0.2, 0.9, 0.4)
    scores = bank.channel_scores(feature[None])[0]
    cos = {p: float(v @ feature) for p, v in TABLE.items()}
    slot0 = [max(cos["sofa that has cushions"], cos["couch that has cushions"]), cos["chair that has legs"]]
    slot1 = [max(cos["sofa"], cos["couch"]), cos["chair"]]
    # channel order is (class, slot)
    assert np.allclose(scores.numpy(), [slot0[0], slot1[0], slot0[1], slot1[1]], atol=1e-6)
    probs = bank.class_probabilities(scores[:, None], logit_scale=40.0)[:, 0].numpy()
    expected = (softmax(slot0, 40) + softmax(slot1, 40)) / 2
    assert np.allclose(probs, expected, atol=1e-5)


def test_softmax_over_all_names_then_max_is_the_reference_order():
    prompts = PROMPTS.model_copy(update={"score_order": "softmax_then_max"})
    bank = build_query_bank(prompts, TableEmbedder(TABLE))
    feature = unit(0.5, 0.1, 0.8)
    scores = bank.channel_scores(feature[None])[0]
    probs = bank.class_probabilities(scores[:, None], logit_scale=40.0)[:, 0].numpy()
    cos = {p: float(v @ feature) for p, v in TABLE.items()}
    expected = np.zeros(2)
    for slot_names in (["sofa that has cushions", "couch that has cushions", "chair that has legs"],
                       ["sofa", "couch", "chair"]):
        p = softmax([cos[n] for n in slot_names], 40)
        expected += [max(p[0], p[1]), p[2]]
    assert np.allclose(probs, expected / 2, atol=1e-5)


def test_hard_and_soft_filters_and_the_background_exemption():
    probs = torch.tensor([[0.2], [0.5], [0.3]])
    hard = apply_class_filter(ClassFilter(present=[2], mode="hard", keep=(0,)), probs)
    assert hard[:, 0].tolist() == pytest.approx([0.2, 0.0, 0.3])
    soft = apply_class_filter(ClassFilter(present=[2], mode="soft", soft_weight=0.5, keep=(0,)), probs)
    assert soft[:, 0].tolist() == pytest.approx([0.2, 0.25, 0.3])
    assert torch.equal(apply_class_filter(ClassFilter(present=None), probs), probs)
    assert ClassFilter(present=[2], mode="none").suppressed(3) == []


def test_soft_filter_keeps_a_class_clip_is_sure_of():
    probs = torch.tensor([[0.95], [0.05]])
    assert apply_class_filter(ClassFilter(present=[1], mode="soft", soft_weight=0.3), probs).argmax() == 0
    assert apply_class_filter(ClassFilter(present=[1], mode="hard"), probs).argmax() == 1


@pytest.mark.parametrize("shape,out", [((7, 9), (31, 20)), ((20, 33), (5, 8)), ((4, 4), (4, 4)), ((3, 50), (100, 17))])
def test_row_resampler_matches_torch_bilinear(shape, out):
    source = torch.randn(5, *shape)
    expected = F.interpolate(source[None], size=out, mode="bilinear", align_corners=False)[0]
    resampler = RowResampler(source, *out)
    bands = torch.cat([resampler.band(s, min(out[0], s + 3)) for s in range(0, out[0], 3)], dim=1)
    assert torch.allclose(bands, expected, atol=1e-5)


def test_window_boxes_cover_the_image_with_equal_windows():
    boxes = window_boxes(336, 448, 224, 112)
    assert len(boxes) == 2 * 3
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes} == {(224, 224)}
    covered = np.zeros((336, 448), int)
    for y1, y2, x1, x2 in boxes:
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert window_boxes(100, 150, 224, 112) == [(0, 100, 0, 150)]  # smaller than a crop: one window


def test_resize_keeps_aspect_and_caps_the_long_side():
    assert resize_shape(375, 500, 336, 2048) == (336, 448)
    assert resize_shape(100, 10000, 336, 2048) == (20, 2048)
