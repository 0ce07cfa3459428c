"""``segment_batch`` against NACLIP's one-window-at-a-time loop on the CPU, side by side.

Issue 12's benchmark (a): the full ViT-B/16 architecture with random weights, 59 classes,
336x448 images (6 windows each), fp32 on the CPU. ``segment_batch`` of 1, 4 and 8 images
and ``naclip_loop.naclip_loop`` (NACLIP's ``forward_slide`` order, same weights, same
encoder) over the same images run interleaved, in alternating order, repetition by
repetition, so load from other processes hits both alike. Load only ever slows a run down,
so the best of the repetitions is the estimate of each one's own speed and the ratio of the
bests is the verdict's; medians and the per-repetition ratios are printed beside them to
show the noise, and the verdict says when the machine was too busy to trust.

To say what batching can gain here at all, it also measures the vision tower alone on one
image's 6 windows as one batch and as 6 batches of 1 (interleaved), and the machine's
fp32 GEMM peak on a matmul of the tower's own shape (6 x 197 tokens x 768 -> 3072, the
MLP's first layer) and of 2048^3: when one window already runs the GEMMs near the
peak, batching windows cannot be much faster, whatever the code around it does.

Last, the precisions side by side: ``segment_batch`` of the largest batch in fp32, bf16 and
``auto`` (what ``--precision auto``, the default, picks on this CPU: bf16 where the CPU
computes bf16 in hardware, else fp32), interleaved, with the share of labels equal to fp32's.

    python benchmarks/bench_segment_batch.py [--repeats 3] [--batches 1,4,8] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from naclip_loop import naclip_loop
from speed_common import flops_per_image, loaded_clip, matmul_peak, random_bank, random_images, random_vit_b16

from openseg_r.segmenters.base import SegmentJob
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig
from openseg_r.segmenters.dense_clip.sliding import window_boxes

GOAL_RATIO = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=59)
    parser.add_argument("--size", default="336x448", help="image HEIGHTxWIDTH")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    height, width = (int(v) for v in args.size.lower().split("x"))
    device = torch.device("cpu")
    load_before = os.getloadavg()

    segmenter = CLIPSegmenter(loaded_clip(random_vit_b16(device), device, torch.float32), SegmenterConfig())
    bank = random_bank(args.classes, segmenter.encoder.embed_dim, device)
    images = random_images(max(batches), height, width)
    cfg = segmenter.config
    boxes = window_boxes(height, width, cfg.crop, cfg.stride)
    flops = flops_per_image(segmenter, images[0], bank)
    print(
        f"cpu threads={torch.get_num_threads()} torch={torch.__version__} image={height}x{width} (HxW) "
        f"windows/image={len(boxes)} classes={args.classes} FLOPs/image={flops / 1e9:.1f} G "
        f"load average before={load_before[0]:.2f}"
    )

    tokens = len(boxes) * (1 + (cfg.crop // segmenter.encoder.patch_size[0]) ** 2)
    peaks_before = {
        "tower-shaped": matmul_peak(device, torch.float32, tokens, 768, 3072),
        "2048^3": matmul_peak(device, torch.float32, 2048, 2048, 2048),
    }

    # warm-up: every shape once (allocator, oneDNN kernel choice)
    segmenter.segment_batch([SegmentJob(images[0], bank)])
    naclip_loop(segmenter, images[0], bank)

    pixels = segmenter.preprocess(images[0], torch.float32)
    crops = torch.cat([pixels[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    tower = {"one batch of 6": [], "6 batches of 1": []}
    runs = {b: {"segment_batch": [], "loop": [], "ratio": []} for b in batches}
    for repeat in range(args.repeats):
        order = ["one batch of 6", "6 batches of 1"][:: 1 if repeat % 2 == 0 else -1]
        for name in order:
            tower[name].append(
                seconds(
                    lambda n=name: (
                        segmenter.encoder(crops)
                        if n == "one batch of 6"
                        else [segmenter.encoder(c[None]) for c in crops]
                    )
                )
            )
        for batch in batches:
            chosen = images[:batch]
            timings = {}
            for name in ["segment_batch", "loop"] if repeat % 2 == 0 else ["loop", "segment_batch"]:
                if name == "segment_batch":
                    timings[name] = seconds(lambda: segmenter.segment_batch([SegmentJob(rgb, bank) for rgb in chosen]))
                else:
                    timings[name] = seconds(lambda: [naclip_loop(segmenter, rgb, bank) for rgb in chosen])
            runs[batch]["segment_batch"].append(batch / timings["segment_batch"])
            runs[batch]["loop"].append(batch / timings["loop"])
            runs[batch]["ratio"].append(timings["loop"] / timings["segment_batch"])
            print(
                f"  repeat {repeat + 1} batch {batch}: segment_batch {batch / timings['segment_batch']:.3f} img/s, "
                f"loop {batch / timings['loop']:.3f} img/s",
                flush=True,
            )

    peaks_after = {
        "tower-shaped": matmul_peak(device, torch.float32, tokens, 768, 3072),
        "2048^3": matmul_peak(device, torch.float32, 2048, 2048, 2048),
    }
    report(args, runs, tower, flops, peaks_before, peaks_after, tokens, load_before)
    precision_rows(args, segmenter, bank, images[: max(batches)], device)


def precision_rows(args, fp32_segmenter, bank, images, device) -> None:
    """fp32, bf16 and auto, interleaved: img/s (best of the repeats) and labels equal to fp32's."""
    import copy

    from openseg_r.segmenters.devices import resolve_dtype

    segmenters = {"fp32": fp32_segmenter}
    for name in ("bf16", "auto"):
        dtype = resolve_dtype(name, device)
        model = copy.deepcopy(fp32_segmenter.clip.model).to(dtype=dtype)
        segmenters[name] = CLIPSegmenter(loaded_clip(model, device, dtype), SegmenterConfig())
    jobs = {name: [SegmentJob(rgb, bank) for rgb in images] for name in segmenters}  # the same text queries
    labels = {name: [a.labels for a in s.segment_batch(jobs[name])] for name, s in segmenters.items()}  # + warm-up
    rates: dict[str, list[float]] = {name: [] for name in segmenters}
    for repeat in range(args.repeats):
        for name in list(segmenters) if repeat % 2 == 0 else list(segmenters)[::-1]:
            rates[name].append(len(images) / seconds(lambda n=name: segmenters[n].segment_batch(jobs[n])))
    print()
    print(
        f"| precision ({len(images)} images per call) | dtype | segment_batch img/s, best (median) | vs fp32 "
        "| labels equal to fp32 |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for name, segmenter in segmenters.items():
        same = sum(int((a == b).sum()) for a, b in zip(labels[name], labels["fp32"]))
        total = sum(a.size for a in labels["fp32"])
        print(
            f"| {name} | {str(segmenter.clip.dtype).replace('torch.', '')} | {max(rates[name]):.3f} "
            f"({statistics.median(rates[name]):.3f}) | {max(rates[name]) / max(rates['fp32']):.2f}x "
            f"| {100 * same / total:.2f}% |"
        )


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def report(args, runs, tower, flops, peaks_before, peaks_after, tokens, load_before) -> None:
    print()
    print(
        "| images per call | segment_batch img/s, best (median) | NACLIP loop img/s, best (median) "
        "| ratio of bests | ratio per repeat |"
    )
    print("| ---: | ---: | ---: | ---: | --- |")
    for batch, r in runs.items():
        print(
            f"| {batch} | {max(r['segment_batch']):.3f} ({statistics.median(r['segment_batch']):.3f}) "
            f"| {max(r['loop']):.3f} ({statistics.median(r['loop']):.3f}) "
            f"| {max(r['segment_batch']) / max(r['loop']):.2f}x | {', '.join(f'{x:.2f}' for x in r['ratio'])} |"
        )
    print()
    gflop = flops / 1e9  # per image; the scoring matmul is < 0.1% of it
    for name, times in tower.items():
        print(
            f"vision tower, one image's windows as {name}: best {min(times):.3f} s ({gflop / min(times):.1f} "
            f"GFLOP/s), median {statistics.median(times):.3f} s"
        )
    gain = min(tower["6 batches of 1"]) / min(tower["one batch of 6"])
    print(f"batching gain of the vision tower alone (best against best): {gain:.2f}x")
    for batch, r in runs.items():  # what is left once the vision tower's share is taken out
        rest_batch = 1 / max(r["segment_batch"]) - min(tower["one batch of 6"])
        rest_loop = 1 / max(r["loop"]) - min(tower["6 batches of 1"])
        print(
            f"outside the vision tower, {batch} image(s) per call (bests): segment_batch ~{rest_batch:.3f} s/image, "
            f"loop ~{rest_loop:.3f} s/image"
        )
    for name in peaks_before:
        shape = f"{tokens}x768x3072" if name == "tower-shaped" else "2048x2048x2048"
        print(
            f"fp32 GEMM peak {shape}: {peaks_before[name] / 1e9:.1f} GFLOP/s before, "
            f"{peaks_after[name] / 1e9:.1f} after (best of 5)"
        )
    load_after = os.getloadavg()[0]
    print(f"load average before {load_before[0]:.2f}, after {load_after:.2f} on {os.cpu_count()} cores")
    ratios = {batch: max(r["segment_batch"]) / max(r["loop"]) for batch, r in runs.items()}
    spread = max(max(r["ratio"]) / min(r["ratio"]) for r in runs.values())
    busy = max(load_before[0], load_after) > (os.cpu_count() or 1) + 0.5 or spread > 1.5
    batch, best_ratio = max(ratios.items(), key=lambda item: item[1])
    print(
        f"verdict: segment_batch is {best_ratio:.2f}x the NACLIP loop at best ({batch} image(s) per call); the goal "
        f"of >= {GOAL_RATIO:.0f}x is {'met' if best_ratio >= GOAL_RATIO else 'NOT met'} on this CPU; batching the "
        f"vision tower alone gains {gain:.2f}x here"
        + (
            "; UNRELIABLE: other processes loaded the machine (ratios per repeat differ by up to "
            f"{spread:.1f}x); rerun on an idle machine"
            if busy
            else ""
        )
    )


if __name__ == "__main__":
    main()
