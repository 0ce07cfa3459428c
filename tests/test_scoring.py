"""Prompt composition and scoring against hand computations (docs/design.md §1.4-1.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openseg_r.schemas import ClassPrompts, PromptSet
from openseg_r.segmenters.base import ClassFilter
from openseg_r.segmenters.dense_clip.scoring import apply_class_filter, build_query_bank
from openseg_r.segmenters.dense_clip.sliding import RowResampler, resize_shape, window_boxes


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
    for slot_names in (
        ["sofa that has cushions", "couch that has cushions", "chair that has legs"],
        ["sofa", "couch", "chair"],
    ):
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


# --------------------------------------------------------------------------- the hard filter is OpenSeg-R's


def _random_bank(score_order: str, num_classes=6, synonyms=2, slots=3, dim=16, seed=0):
    """A bank over random unit vectors: class c has `synonyms` synonyms x `slots` attribute slots."""
    rng = np.random.default_rng(seed)
    classes = [
        ClassPrompts(
            name=f"c{c}",
            queries=[f"c{c}s{s}" for s in range(synonyms)],
            slots=[f"a{j}" for j in range(slots)],
            source="generic",
        )
        for c in range(num_classes)
    ]
    prompts = PromptSet(templates="vild", score_order=score_order, classes=classes)
    table = {
        p: torch.tensor(rng.standard_normal(dim), dtype=torch.float32)
        for c in classes
        for row in c.phrases()
        for p in row
    }
    table = {p: v / v.norm() for p, v in table.items()}
    embed = lambda phrases, templates: torch.stack([table[p] for p in phrases])  # noqa: E731
    return prompts, embed


@pytest.mark.parametrize("score_order", ["max_then_softmax", "softmax_then_max"])
def test_hard_filter_equals_a_classifier_built_from_the_present_classes_only(score_order):
    """OpenSeg-R (MAFT+ `_Reason`) builds its text classifier from the present classes (plus
    background): computed here directly, on a bank of those classes alone."""
    prompts, embed = _random_bank(score_order)
    bank = build_query_bank(prompts, embed)
    features = torch.nn.functional.normalize(
        torch.randn(100, 200, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    present, background = [2, 4], 0
    hard = ClassFilter(present=present, mode="hard", keep=(background,))
    logits = bank.channel_scores(features).permute(2, 0, 1)
    filtered = apply_class_filter(hard, bank.class_probabilities(logits, 40.0, hard))

    kept = [background, *present]
    restricted = PromptSet(templates="vild", score_order=score_order, classes=[prompts.classes[c] for c in kept])
    small = build_query_bank(restricted, embed)
    direct = small.class_probabilities(small.channel_scores(features).permute(2, 0, 1), 40.0)
    expected = torch.zeros_like(filtered)
    expected[kept] = direct
    assert torch.allclose(filtered, expected, atol=1e-6)
    if score_order == "max_then_softmax":  # each slot is a distribution over the kept classes alone
        assert torch.allclose(filtered.sum(0), torch.ones(100, 200), atol=1e-5)

    # `zero` is the other rule: softmax over every class, absent ones set to 0, no renormalising
    zero = ClassFilter(present=present, mode="zero", keep=(background,))
    zeroed = apply_class_filter(zero, bank.class_probabilities(logits, 40.0, zero))
    everything = bank.class_probabilities(logits, 40.0)
    assert torch.equal(zeroed[kept], everything[kept]) and not zeroed[[1, 3, 5]].any()
    changed = int((zeroed.argmax(0) != filtered.argmax(0)).sum())
    assert changed > 0  # the two rules pick different classes on some pixels


def test_a_hard_filter_that_would_remove_every_class_removes_none():
    prompts, embed = _random_bank("max_then_softmax", num_classes=3)
    bank = build_query_bank(prompts, embed)
    logits = torch.randn(bank.num_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    nothing = ClassFilter(present=[], mode="hard")
    assert torch.equal(bank.class_probabilities(logits, 40.0, nothing), bank.class_probabilities(logits, 40.0))
