"""Setup and measurements shared by ``bench_gpu.py`` and ``bench_segment_batch.py``.

What is measured: the full ViT-B/16 architecture with random weights (speed does not
depend on the weights; nothing is downloaded), a bank of random normalised class
embeddings (one query per class, one slot: NACLIP's bare-name setting) and random images.
The roofline side: FLOPs per image counted by ``FlopCounterMode`` and the device's dense
matmul peak measured in the same process, so the fraction reached needs no data sheet.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from openseg_r.segmenters.dense_clip.dense import DenseCLIPEncoder  # noqa: E402
from openseg_r.segmenters.dense_clip.loading import OPENAI_MEAN, OPENAI_STD, LoadedCLIP  # noqa: E402
from openseg_r.segmenters.dense_clip.scoring import QueryBank  # noqa: E402
from openseg_r.segmenters.dense_clip.sliding import window_boxes  # noqa: E402


def random_vit_b16(device: torch.device, seed: int = 0) -> torch.nn.Module:
    """ViT-B-16 (vision and text towers) with random weights, float32, eval mode, with the
    QuickGELU the default model (OpenAI's weights) runs with (``loading.needs_quick_gelu``):
    eagerly it is three elementwise kernels over the 3072-wide hidden layer, GELU one."""
    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-16", pretrained=None, device="cpu", force_quick_gelu=True)
    return model.eval().requires_grad_(False).to(device)


def loaded_clip(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> LoadedCLIP:
    """``model`` as the loader would hand it over; ``dtype`` is what it is recorded as."""
    return LoadedCLIP(
        model, open_clip.get_tokenizer("ViT-B-16"), "ViT-B-16", None, device, dtype, OPENAI_MEAN, OPENAI_STD
    )


def random_bank(num_classes: int, dim: int, device: torch.device, seed: int = 0) -> QueryBank:
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=-1)
    index = torch.arange(num_classes)
    return QueryBank(
        embeddings.to(device), index, index.clone(), torch.zeros(num_classes, dtype=torch.long), num_classes, 1
    )


def random_images(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@torch.inference_mode()
def flops_per_image(segmenter, rgb: np.ndarray, bank: QueryBank) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of one image's windows through the
    vision tower and the text-similarity scoring. Counted on an uncompiled encoder with
    PyTorch's fused attention paths off (the MHA fast path and the CPU flash kernel are not
    known to the counter; their decomposed forms are), so nothing is missed on any device."""
    cfg = segmenter.config
    encoder = DenseCLIPEncoder(segmenter.clip.model, cfg.attention, cfg.gaussian_sigma)
    pixels = segmenter.preprocess(rgb, torch.float32).to(segmenter.clip.dtype)
    boxes = window_boxes(pixels.shape[-2], pixels.shape[-1], cfg.crop, cfg.stride)
    crops = torch.cat([pixels[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            bank.channel_scores(encoder(crops))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


@torch.inference_mode()
def matmul_peak(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 5) -> float:
    """The best FLOP/s of ``repeats`` timed (m x k) @ (k x n) products in ``dtype``."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, clocks
    sync(device)
    best = float("inf")
    inner = 10 if device.type == "cuda" else 1
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2.0 * m * k * n / best


def best_of(repeats: int, run) -> float:
    """The fastest of ``repeats`` runs, in seconds: load only slows a run down."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
