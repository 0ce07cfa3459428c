"""What recording a run costs: the time it adds, and its size on disk.

The VOC photo with VOC-21 and the scripted reasoning of examples/voc_reasoning.json,
full-size ViT-B/16 architecture (random weights). Runs with and without a runs
database alternate in one process, so the ratio is fair on a noisy machine. Sizes:
the first recorded run (new image, new arrays), and a later run of the same image
(content-addressed arrays are shared, so it adds mostly checkpoints).

    python benchmarks/bench_recording.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from openseg_r import OpenSegR  # noqa: E402
from openseg_r._support.images import load_image  # noqa: E402
from openseg_r.lmm import ScriptedLMM  # noqa: E402
from openseg_r.runs import RunsDB  # noqa: E402
from openseg_r.segmenters.dense_clip import CLIPSegmenter, load_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rgb = load_image(ROOT / "examples" / "voc.jpg")
    script = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
    segmenter = CLIPSegmenter(load_clip("ViT-B-16", None))
    folder = Path(tempfile.mkdtemp(prefix="openseg-r-bench-"))
    plain = OpenSegR(segmenter=segmenter, lmm=ScriptedLMM(script), reasoning_cache="none")
    recorded = OpenSegR(
        segmenter=segmenter, lmm=ScriptedLMM(script), reasoning_cache="none", runs_db=RunsDB(folder / "runs.sqlite")
    )
    plain.segment(rgb, "voc21")  # warm: text embeddings (shared segmenter) and generic reasoning
    before = disk_bytes(folder)
    recorded.segment(rgb, "voc21")
    first = disk_bytes(folder) - before
    times = {"without": [], "with": []}
    for _ in range(args.repeats):
        for name, model in (("without", plain), ("with", recorded)):
            started = time.perf_counter()
            model.segment(rgb, "voc21")
            times[name].append(time.perf_counter() - started)
    later = (disk_bytes(folder) - before - first) / args.repeats
    off, on = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"image=voc.jpg 500x375 vocabulary=voc21 model=ViT-B-16 (random weights) repeats={args.repeats}")
    print(
        f"median s/image: without recording {off:.3f}, with {on:.3f}; "
        f"added {1000 * (on - off):+.0f} ms ({on / off:.3f}x)"
    )
    print(f"on disk: first run {first / 1e6:.2f} MB; each later run of the same image {later / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
