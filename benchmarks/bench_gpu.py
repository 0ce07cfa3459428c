"""Images per second of ``CLIPSegmenter.segment_batch`` on a GPU, against the roofline.

The setting of issue 12's goal: the full ViT-B/16 architecture with random weights (speed
does not depend on them; nothing is downloaded), 59 classes (random normalised text
embeddings, one query each), 336x448 images (the default settings keep that size and
slide 6 windows of 224 with stride 112 over it). For each precision (fp16, bf16; fp32 for
reference) and each way of running it (``cast``: the whole model in that dtype, what
``load_clip`` does; ``autocast``: float32 weights under ``torch.autocast``) it prints:

- ``segment_batch`` img/s at each batch size (whole pipeline: upload, windows, vision
  tower, scoring, window averaging, resize, probabilities, top-2, copy to the host);
- the vision tower alone on the same windows (where the FLOPs are);
- the fraction of roofline reached: achieved FLOP/s (FLOPs per image, counted by
  ``FlopCounterMode``, times img/s) over the dense matmul peak measured here in that dtype;
- NACLIP's own order (``naclip_loop.py``: one window at a time) in the same run;
- how many pixels get the label the fp32 model gives (a check that half precision is sane).

Every timing has warm-up runs first and ``torch.cuda.synchronize()`` around it; the
median of ``--repeats`` runs is reported. The last line is a verdict against the goal
(>= 40% of roofline, about >= 2,400 img/s on an H100).

    python benchmarks/bench_gpu.py                          # CUDA: fp16, bf16, fp32; cast and autocast
    python benchmarks/bench_gpu.py --compile                # the vision tower through torch.compile
    python benchmarks/bench_gpu.py --mode cast --precisions fp16 --batches 64,128
    python benchmarks/bench_gpu.py --device cpu --quick     # smoke check on any machine (not a measurement)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from contextlib import nullcontext

import torch
from naclip_loop import naclip_loop
from speed_common import flops_per_image, loaded_clip, matmul_peak, random_bank, random_images, random_vit_b16, sync

from openseg_r.segmenters.base import SegmentJob
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig
from openseg_r.segmenters.dense_clip.sliding import window_boxes

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GOAL_FRACTION, GOAL_IMAGES_PER_S = 0.40, 2400.0


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; run with --device cpu --quick for a smoke check")
    if args.compile:  # one graph per (encoder, window count): more than dynamo's default of 8
        torch._dynamo.config.recompile_limit = 256
    height, width = (int(v) for v in args.size.lower().split("x"))
    images = random_images(max(args.batches + [args.loop_images, args.check_images]), height, width)
    base = random_vit_b16(device)
    bank = random_bank(args.classes, base.visual.proj.shape[1], device)
    windows = len(window_boxes(height, width, SegmenterConfig().crop, SegmenterConfig().stride))
    reference = CLIPSegmenter(loaded_clip(base, device, torch.float32), SegmenterConfig())
    flops = flops_per_image(reference, images[0], bank)
    reference_labels = [a.labels for a in reference.segment_batch(jobs(images[: args.check_images], bank))]
    print(
        f"device={_device_name(device)} torch={torch.__version__} image={height}x{width} (HxW) "
        f"windows/image={windows} classes={args.classes} compile={args.compile} FLOPs/image={flops / 1e9:.1f} G "
        f"(vision tower + scoring, 2 per multiply-add)"
    )

    rows, peaks = [], {}
    for precision in args.precisions:
        dtype = DTYPES[precision]
        if precision not in peaks:
            peaks[precision] = matmul_peak(device, dtype, args.peak_size, args.peak_size, args.peak_size)
            print(
                f"dense matmul peak {precision} ({args.peak_size}^3, best of 5): {peaks[precision] / 1e12:.2f} TFLOP/s"
            )
        for mode in args.modes:
            if precision == "fp32" and mode == "autocast":
                continue
            peak = peaks[precision]
            rows += measure(args, device, base, bank, images, reference_labels, precision, mode, flops, peak)
    print_table(rows)
    print(verdict(rows, device))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"flops_per_image": flops, "peaks": peaks, "rows": rows}, out, indent=1)


def measure(args, device, base, bank, images, reference_labels, precision, mode, flops, peak) -> list[dict]:
    dtype = DTYPES[precision]
    model = base if mode == "autocast" or dtype == torch.float32 else copy.deepcopy(base).to(dtype)
    clip = loaded_clip(model, device, torch.float32 if mode == "autocast" else dtype)
    segmenter = CLIPSegmenter(clip, SegmenterConfig(compile=args.compile))
    context = (lambda: torch.autocast(device.type, dtype)) if mode == "autocast" else nullcontext
    with context():
        labels = [a.labels for a in segmenter.segment_batch(jobs(images[: args.check_images], bank))]
        loop = [naclip_loop(segmenter, rgb, bank)["labels"] for rgb in images[: args.check_images]]
        loop_seconds = timed(
            lambda: [naclip_loop(segmenter, rgb, bank) for rgb in images[: args.loop_images]],
            device,
            args.warmup,
            args.repeats,
        )
    agree = sum(int((a == b).sum()) for a, b in zip(labels, reference_labels)) / sum(a.size for a in labels)
    loop_agree = sum(int((a == b).sum()) for a, b in zip(labels, loop)) / sum(a.size for a in labels)
    rows = []
    for batch in args.batches:
        batch_jobs = jobs(images[:batch], bank)
        crops = torch.cat([_windows(segmenter, rgb) for rgb in images[:batch]])
        with context():
            seconds = timed(lambda: segmenter.segment_batch(batch_jobs), device, args.warmup, args.repeats)
            tower = timed(lambda: segmenter.encoder(crops), device, args.warmup, args.repeats)
        rows.append(
            {
                "precision": precision,
                "mode": mode,
                "batch": batch,
                "images_per_s": batch / seconds,
                "tower_images_per_s": batch / tower,
                "roofline": batch / seconds * flops / peak,
                "tower_roofline": batch / tower * flops / peak,
                "loop_images_per_s": args.loop_images / loop_seconds,
                "labels_as_fp32": agree,
                "labels_as_loop": loop_agree,
                "peak_tflops": peak / 1e12,
            }
        )
        print(f"  {precision} {mode} batch {batch}: {_num(rows[-1]['images_per_s'])} img/s", flush=True)
    return rows


def jobs(images, bank) -> list[SegmentJob]:
    return [SegmentJob(rgb, bank) for rgb in images]  # no image_key: nothing is reused between runs


@torch.inference_mode()  # as segment_batch makes them: a compiled graph guards on it
def _windows(segmenter, rgb) -> torch.Tensor:
    pixels = segmenter.preprocess(rgb, torch.float32)
    boxes = window_boxes(pixels.shape[-2], pixels.shape[-1], segmenter.config.crop, segmenter.config.stride)
    return torch.cat([pixels[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes]).to(segmenter.clip.dtype)


def timed(run, device, warmup: int, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| precision | mode | batch | segment_batch img/s | % of peak | vision tower img/s | % of peak "
        "| NACLIP loop img/s | batch / loop | labels = fp32 | labels = loop |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['precision']} | {r['mode']} | {r['batch']} | {_num(r['images_per_s'])} "
            f"| {100 * r['roofline']:.1f} | {_num(r['tower_images_per_s'])} | {100 * r['tower_roofline']:.1f} "
            f"| {_num(r['loop_images_per_s'])} "
            f"| {r['images_per_s'] / r['loop_images_per_s']:.2f}x | {100 * r['labels_as_fp32']:.2f}% "
            f"| {100 * r['labels_as_loop']:.2f}% |"
        )
    print()


def verdict(rows: list[dict], device: torch.device) -> str:
    half = [r for r in rows if r["precision"] != "fp32"] or rows
    best = max(half, key=lambda r: r["images_per_s"])
    where = f"{best['precision']} {best['mode']} batch {best['batch']}"
    met = best["roofline"] >= GOAL_FRACTION and best["images_per_s"] >= GOAL_IMAGES_PER_S
    if device.type != "cuda":
        return (
            f"verdict: smoke check only ({device.type}); the goal (>= {GOAL_FRACTION:.0%} of roofline, "
            f">= {GOAL_IMAGES_PER_S:.0f} img/s) is for an H100. Best here: {_num(best['images_per_s'])} img/s, "
            f"{best['roofline']:.1%} of roofline ({where})"
        )
    return (
        f"verdict: {'goal met' if met else 'goal NOT met'}: best {best['images_per_s']:.0f} img/s and "
        f"{best['roofline']:.1%} of roofline ({where}) against >= {GOAL_IMAGES_PER_S:.0f} img/s and "
        f">= {GOAL_FRACTION:.0%}; vision tower alone {best['tower_images_per_s']:.0f} img/s, "
        f"{best['tower_roofline']:.1%}"
    )


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp16,bf16,fp32", help="comma-separated: fp16, bf16, fp32")
    parser.add_argument(
        "--mode",
        default="both",
        choices=("cast", "autocast", "both"),
        help="cast: the whole model in the dtype (what load_clip does); autocast: fp32 weights",
    )
    parser.add_argument("--compile", action="store_true", help="SegmenterConfig(compile=True)")
    parser.add_argument("--batches", default="1,8,32,64", help="images per segment_batch call, comma-separated")
    parser.add_argument("--classes", type=int, default=59)
    parser.add_argument("--size", default="336x448", help="image HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loop-images", type=int, default=16, help="images per timed run of the NACLIP loop")
    parser.add_argument("--check-images", type=int, default=4, help="images compared with fp32 and the loop")
    parser.add_argument("--peak-size", type=int, default=8192, help="side of the square matmul for the peak")
    parser.add_argument("--quick", action="store_true", help="a smoke check: fp32 cast, batches 1,2, one repeat")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.precisions, args.mode, args.batches = "fp32", "cast", "1,2"
        args.repeats, args.warmup, args.loop_images, args.check_images = 1, 0, 1, 1
        args.peak_size = min(args.peak_size, 1024)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in args.precisions if p not in DTYPES]
    if unknown:
        parser.error(f"unknown precision {unknown[0]!r}; choose from {', '.join(DTYPES)}")
    args.modes = ["cast", "autocast"] if args.mode == "both" else [args.mode]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


if __name__ == "__main__":
    main()
