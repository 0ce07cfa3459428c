"""Benchmark: what the web page's server side adds to a run.

The same run, side by side and alternating, on the README's VOC photo with reasoning
(the scripted backend) and a random ViT-B/16 CLIP (the real model's size, not its
weights):

- ``direct``: ``OpenSegR.segment(rgb, vocabulary)``;
- ``page``: everything the page's server does for one click: the upload read back and
  checked, the image decoded from its bytes, the run in a service slot with its events
  streamed into the live trace (the trace rendered at every yield, as the page sends it),
  then the overlay, the legend, and the four download files written.

    python benchmarks/bench_web.py [--repeats 5] [--classes voc21]

Reports the median seconds of each and their ratio (page / direct). The segmenter keeps
the photo's window features between runs (its LRU), so neither side pays the vision
tower's passes again: what differs is the page's own work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from speed_common import loaded_clip, random_vit_b16  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r.segmenters.dense_clip import CLIPSegmenter  # noqa: E402
from openseg_r.tools.safety import SafetyLimits  # noqa: E402
from openseg_r.tools.service import SegmentationService  # noqa: E402
from openseg_r.tools.web.backends import BackendChoices  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", default="voc21")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-web-"))
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
    from openseg_r.tools.web.app import WebApp, result_html  # after GRADIO_TEMP_DIR: the upload folder

    device = torch.device("cpu")
    segmenter = CLIPSegmenter(loaded_clip(random_vit_b16(device), device, torch.float32))
    model = OpenSegR(segmenter=segmenter, lmm=f"scripted:{SCRIPT}")
    web = WebApp(SegmentationService(model, SafetyLimits()), BackendChoices(model), folder / "downloads")
    upload = Path(web.upload_folder) / "bench" / "voc.jpg"
    upload.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(PHOTO, upload)
    payload = {"path": str(upload), "orig_name": "voc.jpg"}

    def direct() -> None:
        from openseg_r._support.images import load_image

        model.segment(load_image(PHOTO), args.classes)

    def page() -> None:
        live, _ = web.prepare(payload, args.classes, "", True, "off", False)
        for _ in live.start():
            live.trace.html()
        assert live.result is not None, live.error
        live.result.overlay()
        result_html(live.result)
        web.finish(live)

    direct(), page()  # warm: text embeddings, reasoning cache, first-call costs
    times: dict[str, list[float]] = {"direct": [], "page": []}
    for _ in range(args.repeats):
        for name, run in (("direct", direct), ("page", page)):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    shutil.rmtree(folder, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"VOC photo 500x375, {args.classes}, random ViT-B/16 on {device}, {torch.get_num_threads()} threads, "
        f"{args.repeats} alternating repeats"
    )
    for name, value in medians.items():
        print(f"  {name:7s} median {value:6.3f} s   (all: {', '.join(f'{v:.3f}' for v in times[name])})")
    print(
        f"  page / direct: {medians['page'] / medians['direct']:.2f}x "
        f"(+{medians['page'] - medians['direct']:.3f} s per run)"
    )


if __name__ == "__main__":
    main()
