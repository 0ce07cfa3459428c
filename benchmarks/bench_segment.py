"""Time the segmentation of one image at the default settings.

Full-size ViT-B/16 architecture with random weights (speed does not depend on the
weights), the VOC photo shipped in examples/ (375x500 -> 336x448, 6 windows),
and the VOC-21 vocabulary with 3 attribute slots per class (the reasoning path).

Batched windows (one forward for all windows) and one window at a time run
interleaved in the same process, so their ratio is fair on a noisy machine.

    python benchmarks/bench_segment.py [--repeats 5] [--device cpu|cuda] [--precision auto|fp32|fp16|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r._support.images import load_image  # noqa: E402
from openseg_r.lmm import ScriptedLMM  # noqa: E402
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig, load_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clip = load_clip("ViT-B-16", None, device=args.device, precision=args.precision)
    rgb = load_image(ROOT / "examples" / "voc.jpg")
    script = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
    variants = {
        "batched": CLIPSegmenter(clip, SegmenterConfig()),
        "one_window_at_a_time": CLIPSegmenter(clip, SegmenterConfig(window_batch_size=1)),
    }
    pipelines = {
        name: OpenSegR(segmenter=seg, lmm=ScriptedLMM(script), reasoning_cache="none") for name, seg in variants.items()
    }

    # Cold start: text embeddings of VOC-21 with 3 attribute slots (cached afterwards).
    started = time.perf_counter()
    first = pipelines["batched"].segment(rgb, "voc21")
    cold = time.perf_counter() - started
    pipelines["one_window_at_a_time"].segment(rgb, "voc21")  # warm its cache too

    seg_times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, pipeline in pipelines.items():
            _sync(clip.device)
            started = time.perf_counter()
            result = pipeline.segment(rgb, "voc21")
            _sync(clip.device)
            seg_times[name].append(time.perf_counter() - started)

    medians = {name: statistics.median(times) for name, times in seg_times.items()}
    sliding = __import__("openseg_r.segmenters.dense_clip.sliding", fromlist=["window_boxes"])
    windows = len(sliding.window_boxes(336, 448, 224, 112))
    print(
        f"device={clip.device} dtype={str(clip.dtype).replace('torch.', '')} threads={torch.get_num_threads()} "
        f"image={rgb.shape[1]}x{rgb.shape[0]} windows={windows} "
        f"queries={sum(len(c.queries) for c in first.state.vocabulary.classes) * 3}"
    )
    print(f"first image (includes text embeddings): {cold:.3f} s")
    for name, times in seg_times.items():
        print(f"{name:22s} median {medians[name]:.3f} s/image  (runs: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"speed-up of batched windows: {medians['one_window_at_a_time'] / medians['batched']:.2f}x")
    segmentation_node = [t.seconds for t in result.state.timings if t.node == "segmentation"]
    print(f"segmentation node alone (last batched run): {segmentation_node[0]:.3f} s")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
