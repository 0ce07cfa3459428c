"""Benchmark: fp32, bf16 and ``auto`` on the CPU, side by side: speed and label agreement.

``--precision auto`` picks bf16 on a CPU that computes bf16 in hardware (AVX512-BF16 or
AMX) and fp32 elsewhere. This measures what that choice gives and costs, on the full
ViT-B/16 architecture with the golden random weights (``tests/golden/weights.py``, the
QuickGELU model the NACLIP parity tests use; trained weights cannot be downloaded here):

- speed: ``segment_batch`` of ``--batch`` copies of the shipped photo (``examples/voc.jpg``,
  500x375, 6 windows each), the precisions interleaved repetition by repetition (load
  from other processes hits all alike); the best of the repetitions is each one's speed;
- agreement: the share of pixels whose label equals fp32's, for the golden input image
  (``tests/data/naclip_golden_inputs.npz``, the VOC photo at NACLIP's inference size with
  seeded noise) and the shipped photo, with the VOC-21 names as the vocabulary (text
  embedded by each precision's own text tower), bare names and NACLIP's scoring, with and
  without PAMR.

    python benchmarks/bench_precision.py [--repeats 3] [--batch 4] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from golden.weights import open_clip_model  # noqa: E402

from openseg_r._support.images import load_image  # noqa: E402
from openseg_r.schemas import ClassPrompts, PromptSet  # noqa: E402
from openseg_r.segmenters.base import SegmentJob  # noqa: E402
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig  # noqa: E402
from openseg_r.segmenters.dense_clip.loading import (  # noqa: E402
    OPENAI_MEAN,
    OPENAI_STD,
    LoadedCLIP,
)
from openseg_r.segmenters.devices import cpu_computes_bf16, resolve_dtype  # noqa: E402
from openseg_r.vocab import load_builtin  # noqa: E402

PRECISIONS = ("fp32", "bf16", "auto")


def segmenter_for(precision: str, pamr_steps: int = 0) -> CLIPSegmenter:
    import open_clip

    device = torch.device("cpu")
    dtype = resolve_dtype(precision, device)
    model = open_clip_model().eval().requires_grad_(False).to(dtype=dtype)
    clip = LoadedCLIP(
        model, open_clip.get_tokenizer("ViT-B-16"), "ViT-B-16-quickgelu", None, device, dtype, OPENAI_MEAN, OPENAI_STD
    )
    return CLIPSegmenter(clip, SegmenterConfig(pamr_steps=pamr_steps))


def voc_prompts() -> PromptSet:
    names = load_builtin("voc21").names
    return PromptSet(
        templates="imagenet",
        score_order="softmax_then_max",
        classes=[ClassPrompts(name=n, queries=[n], slots=[None], source="bare") for n in names],
    )


def labels(segmenter: CLIPSegmenter, bank, rgb: np.ndarray) -> np.ndarray:
    return segmenter.segment_batch([SegmentJob(rgb, bank, logit_scale=40.0)])[0].labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    photo = load_image(ROOT / "examples" / "voc.jpg")
    with np.load(ROOT / "tests" / "data" / "naclip_golden_inputs.npz") as data:
        golden = data["image"]
    auto = resolve_dtype("auto", torch.device("cpu"))
    print(
        f"torch={torch.__version__} threads={torch.get_num_threads()} cpu computes bf16: {cpu_computes_bf16()} "
        f"-> auto is {str(auto).replace('torch.', '')}; ViT-B/16 (golden random weights), VOC-21 names, "
        f"batch of {args.batch} x 500x375"
    )
    prompts = voc_prompts()

    # agreement with fp32
    print("\n| image | PAMR | bf16 labels equal to fp32 | auto labels equal to fp32 |")
    print("| --- | --- | ---: | ---: |")
    for pamr in (0, 10):
        segmenters = {p: segmenter_for(p, pamr) for p in PRECISIONS}
        banks = {p: s.query_bank(prompts) for p, s in segmenters.items()}
        for name, rgb in (("golden input 336x448", golden), ("examples/voc.jpg 500x375", photo)):
            maps = {p: labels(segmenters[p], banks[p], rgb) for p in PRECISIONS}
            shares = {p: float((maps[p] == maps["fp32"]).mean()) for p in ("bf16", "auto")}
            print(
                f"| {name} | {'10 steps' if pamr else 'off'} | {100 * shares['bf16']:.2f}% | "
                f"{100 * shares['auto']:.2f}% |"
            )

    # speed
    segmenters = {p: segmenter_for(p) for p in PRECISIONS}
    banks = {p: s.query_bank(prompts) for p, s in segmenters.items()}
    images = [photo] * args.batch
    for p in PRECISIONS:  # warm-up: kernels chosen, allocator settled
        segmenters[p].segment_batch([SegmentJob(rgb, banks[p]) for rgb in images[:1]])
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for repeat in range(args.repeats):
        for p in PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]:
            started = time.perf_counter()
            segmenters[p].segment_batch([SegmentJob(rgb, banks[p]) for rgb in images])
            rates[p].append(len(images) / (time.perf_counter() - started))
    print("\n| precision | dtype | segment_batch img/s, best (all) | vs fp32 |")
    print("| --- | --- | ---: | ---: |")
    for p in PRECISIONS:
        dtype = str(resolve_dtype(p, torch.device("cpu"))).replace("torch.", "")
        print(
            f"| {p} | {dtype} | {max(rates[p]):.3f} ({', '.join(f'{r:.3f}' for r in rates[p])}) | "
            f"{max(rates[p]) / max(rates['fp32']):.2f}x |"
        )


if __name__ == "__main__":
    main()
