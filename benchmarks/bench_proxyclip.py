"""ProxyCLIP against dense CLIP (NACLIP), per image, side by side in one run, and the share
of ProxyCLIP's time its VFM takes.

Both at their real sizes with random weights (speed does not depend on the weights;
nothing is downloaded): open_clip's ViT-B/16 as the CLIP of both, and a transformers
``ViTModel`` of DINO ViT-B/8's sizes (12 blocks, width 768, patch 8; ``--vfm dinov2``:
DINOv2 ViT-B/14 with 4 registers) as the VFM. Each runs its own defaults on the same
images: NACLIP 224/112 windows, ProxyCLIP 336/112, the short side at 336. The images take
turns, repetition by repetition; the best time of each is the estimate (load only slows
a run down). The VFM's share is its forward pass on the same windows, timed alone, over
ProxyCLIP's whole segment.

    python benchmarks/bench_proxyclip.py [--images 3] [--repeats 3] [--classes 21] [--device cpu] [--vfm dino|dinov2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from speed_common import best_of, loaded_clip, random_bank, random_images, random_vit_b16, sync  # noqa: E402

from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig  # noqa: E402
from openseg_r.segmenters.dense_clip.sliding import resize_shape, window_boxes  # noqa: E402
from openseg_r.segmenters.proxyclip.options import ProxyCLIPOptions  # noqa: E402
from openseg_r.segmenters.proxyclip.segmenter import ProxyCLIPSegmenter  # noqa: E402
from openseg_r.segmenters.proxyclip.vfm import load_vfm, locate_vfm  # noqa: E402


def save_vfm(family: str, folder: Path) -> tuple[str, Path]:
    torch.manual_seed(0)
    if family == "dinov2":
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=518, num_register_tokens=4)).save_pretrained(
            folder
        )
        return "dinov2-vitb14-reg", folder
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(patch_size=8, image_size=224, qkv_bias=True, layer_norm_eps=1e-6)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return "dino-vitb8", folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--vfm", default="dino", choices=("dino", "dinov2"))
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    torch.set_grad_enabled(False)
    clip = loaded_clip(random_vit_b16(device).to(dtype), device, dtype)
    with tempfile.TemporaryDirectory() as folder:
        name, path = save_vfm(args.vfm, Path(folder) / "vfm")
        vfm = load_vfm(name, locate_vfm(name, str(path)), device=device, dtype=dtype)
    dense = CLIPSegmenter(clip, SegmenterConfig())
    proxy = ProxyCLIPSegmenter(clip, vfm, ProxyCLIPOptions(vfm=name))
    bank = random_bank(args.classes, clip.model.visual.proj.shape[1], device)
    images = random_images(args.images, 375, 500)
    height, width = resize_shape(375, 500, 336, 2048)
    windows = len(window_boxes(height, width, 336, 112))
    vfm_input = torch.randn(windows, 3, 336, 336, device=device)
    for rgb in images[:1]:  # warm-up: allocations, one-time caches
        dense.segment(rgb, bank), proxy.segment(rgb, bank), proxy.encoder.vfm_features(vfm_input)
    totals = {"dense": [], "proxy": [], "vfm": []}
    for rgb in images:
        totals["dense"].append(best_of(args.repeats, lambda: (dense.segment(rgb, bank), sync(device))))
        totals["proxy"].append(best_of(args.repeats, lambda: (proxy.segment(rgb, bank), sync(device))))
        totals["vfm"].append(best_of(args.repeats, lambda: (proxy.encoder.vfm_features(vfm_input), sync(device))))
    ms = {key: 1000 * sum(values) / len(values) for key, values in totals.items()}
    print(
        f"{device.type} {args.precision}, {args.images} image(s) of 500x375 (inference 448x336), "
        f"{args.classes} classes, best of {args.repeats}; torch threads {torch.get_num_threads()}"
    )
    print(f"dense CLIP (NACLIP, 224/112 windows):      {ms['dense']:9.1f} ms per image")
    print(
        f"ProxyCLIP ({name}, {windows} windows of 336): {ms['proxy']:9.1f} ms per image "
        f"({ms['proxy'] / ms['dense']:.2f}x)"
    )
    print(f"  of which the VFM ({windows} windows):      {ms['vfm']:9.1f} ms ({100 * ms['vfm'] / ms['proxy']:.0f}%)")


if __name__ == "__main__":
    main()
