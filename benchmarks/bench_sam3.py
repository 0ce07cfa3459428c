"""SAM 3 behind the reasoning: images per second, and per-image cost against the number of
phrases, with and without the hard class filter, side by side in one run.

A random SAM 3 (``--size tiny``: transformers' test sizes, 224-pixel images; ``--size
real``: ``Sam3Config()``'s own sizes, 1008-pixel images) is saved to a temporary folder
and built through the registry, as a user's folder would be. For each vocabulary size N
(phrases = classes x names), the same images run with every class sent to SAM 3 and with
the hard class filter keeping a quarter of them (what image reasoning does when it finds
a few classes present), interleaved, repetition by repetition; the best time of each is
the estimate (load only slows a run down), and the ratio is the filter's saving. The
vision pass is timed alone too: it is paid once per image whatever the phrases.

    python benchmarks/bench_sam3.py [--size tiny|real] [--classes 4,16,64] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from speed_common import best_of  # noqa: E402
from tiny_sam3 import clip_tokenizer, save_tiny_sam3  # noqa: E402

from openseg_r.schemas import ClassPrompts, PromptSet  # noqa: E402
from openseg_r.segmenters.base import BuildRequest, ClassFilter  # noqa: E402
from openseg_r.segmenters.registry import build_segmenter  # noqa: E402


def save_real_size(folder: Path) -> Path:
    from transformers import Sam3Config, Sam3Model, Sam3Processor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    torch.manual_seed(0)
    Sam3Model(Sam3Config()).eval().save_pretrained(folder)
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=clip_tokenizer(folder / "tok")).save_pretrained(
        folder
    )
    return folder


def vocabulary(classes: int) -> PromptSet:
    return PromptSet(
        templates="vild",
        score_order="max_then_softmax",
        classes=[
            ClassPrompts(name=f"thing{i}", queries=[f"thing{i}"], slots=[None], source="bare") for i in range(classes)
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--classes", default="4,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "sam3"
        (save_tiny_sam3 if args.size == "tiny" else save_real_size)(model)
        segmenter = build_segmenter(
            "sam3",
            {"model": str(model), "instance_threshold": 0.0},
            BuildRequest(device=args.device, precision=args.precision),
        )
        side = 224 if args.size == "tiny" else 1008
        rgb = (np.random.default_rng(0).random((side, side * 4 // 3, 3)) * 255).astype(np.uint8)
        vision = best_of(args.repeats, lambda: segmenter._encode([rgb]))
        print(
            f"SAM 3 {args.size}, {args.device} {args.precision}, image {rgb.shape[1]}x{rgb.shape[0]}, "
            f"{args.repeats} repetitions (best of)"
        )
        print(f"vision pass alone: {vision * 1000:.1f} ms per image")
        print(f"{'classes':>7} {'phrases':>7} {'all (ms)':>9} {'filtered (ms)':>13} {'img/s all':>9} {'saving':>7}")
        for classes in (int(c) for c in args.classes.split(",")):
            bank = segmenter.query_bank(vocabulary(classes))
            present = ClassFilter(present=list(range(max(1, classes // 4))))
            every = filtered = float("inf")
            for _ in range(args.repeats):  # interleaved: load hits both alike
                every = min(every, best_of(1, lambda: segmenter.segment(rgb, bank)))
                filtered = min(filtered, best_of(1, lambda: segmenter.segment(rgb, bank, class_filter=present)))
            print(
                f"{classes:7d} {len(bank.phrases.phrases):7d} {every * 1000:9.1f} {filtered * 1000:13.1f} "
                f"{1 / every:9.2f} {every / filtered:6.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
