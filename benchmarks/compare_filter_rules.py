"""How often OpenSeg-R's hard class filter and the older `zero` rule pick different classes.

    python benchmarks/compare_filter_rules.py [--classes 6] [--present 2] [--slots 3] [--seed 1]

Random unit text and patch embeddings (no model), 100x200 pixels, one synonym per class:
`hard` takes each slot's softmax over the present classes only; `zero` takes it over every
class and then zeroes the absent ones. Prints the share of pixels whose argmax differs.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from openseg_r.schemas import ClassPrompts, PromptSet
from openseg_r.segmenters.base import ClassFilter
from openseg_r.segmenters.dense_clip.scoring import apply_class_filter, build_query_bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--present", type=int, default=2)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    classes = [
        ClassPrompts(name=f"c{c}", queries=[f"c{c}"], slots=[f"a{j}" for j in range(args.slots)], source="generic")
        for c in range(args.classes)
    ]
    prompts = PromptSet(templates="vild", score_order="max_then_softmax", classes=classes)
    vectors = {p: rng.standard_normal(16) for c in classes for row in c.phrases() for p in row}
    embed = lambda phrases, templates: torch.nn.functional.normalize(  # noqa: E731
        torch.tensor(np.array([vectors[p] for p in phrases]), dtype=torch.float32), dim=-1
    )
    bank = build_query_bank(prompts, embed)
    features = torch.nn.functional.normalize(
        torch.tensor(rng.standard_normal((100, 200, 16)), dtype=torch.float32), dim=-1
    )
    logits = bank.channel_scores(features).permute(2, 0, 1)
    present = sorted(rng.choice(args.classes, args.present, replace=False).tolist())
    picks = {}
    for mode in ("hard", "zero"):
        rule = ClassFilter(present=present, mode=mode)
        picks[mode] = apply_class_filter(rule, bank.class_probabilities(logits, 40.0, rule)).argmax(0)
    changed = int((picks["hard"] != picks["zero"]).sum())
    print(
        f"{args.classes} classes, {args.present} present {present}, {args.slots} slots: argmax differs in "
        f"{changed} of {picks['hard'].numel()} pixels ({100 * changed / picks['hard'].numel():.1f}%)"
    )


if __name__ == "__main__":
    main()
