"""The speed-only paths of the vision tower give the features of the plain path.

``torch.compile`` (``SegmenterConfig.compile``) must change how fast features come, never
what they are; when it cannot compile, the encoder says so in one line and runs eagerly.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from openseg_r.segmenters.dense_clip.dense import DenseCLIPEncoder

COMPILE_BUDGET_S = 120  # slower than this on this machine: skipped, not a failure (it is only speed)


def test_compiled_encoder_gives_the_eager_features(tiny_clip, monkeypatch, tmp_path):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler, and none is installed")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # compile for real, every run
    torch.manual_seed(5)
    pixels = torch.randn(2, 3, 48, 80)  # a non-square grid: positional embedding resized, NACLIP bias 3x5
    eager = DenseCLIPEncoder(tiny_clip.model, "naclip")(pixels)
    compiled = DenseCLIPEncoder(tiny_clip.model, "naclip", compile=True)
    started = time.perf_counter()
    got = compiled(pixels)
    if compiled.compile_error is not None:
        pytest.skip(f"torch.compile is unavailable here: {compiled.compile_error}")
    if time.perf_counter() - started > COMPILE_BUDGET_S:
        pytest.skip(f"torch.compile took over {COMPILE_BUDGET_S} s on this machine")
    assert compiled._compiled is not None  # the compiled graph ran, not the eager fallback
    assert got.shape == eager.shape and got.dtype == torch.float32
    assert torch.allclose(got, eager, atol=1e-4, rtol=0), (got - eager).abs().max()
    assert torch.allclose(compiled(pixels), eager, atol=1e-4, rtol=0)  # the graph is reused


def test_failed_compilation_falls_back_with_one_line(tiny_clip, capsys):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found\nlong details\nmore details")

    encoder = DenseCLIPEncoder(tiny_clip.model, "naclip", compile=True)
    encoder._compiled = torch.compile(encoder._encode, backend=broken_backend, dynamic=False)
    pixels = torch.randn(1, 3, 64, 64)
    got = encoder(pixels)
    assert torch.allclose(got, DenseCLIPEncoder(tiny_clip.model, "naclip")(pixels), atol=1e-6)
    assert encoder._compiled is None and "no C++ compiler found" in encoder.compile_error
    assert "\n" not in encoder.compile_error
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("openseg-r: torch.compile failed")
    encoder(pixels)  # eager from now on: no second message
    assert capsys.readouterr().err == ""


def test_compile_is_off_by_default(tiny_clip):
    encoder = DenseCLIPEncoder(tiny_clip.model, "naclip")
    assert encoder.compile is False and encoder._compiled is None


def test_the_benchmarks_naclip_loop_gives_segment_batchs_labels(tiny_segmenter, rng):
    """The speed benchmarks' baseline (NACLIP's one-window-at-a-time order, pad-add into a
    canvas, one resize, softmax) is a faithful baseline only if it computes what
    ``segment_batch`` computes; and ``segment_batch`` computes what NACLIP's order does."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from naclip_loop import naclip_loop
    from speed_common import random_bank

    from openseg_r.segmenters.base import SegmentJob

    bank = random_bank(7, tiny_segmenter.encoder.embed_dim, torch.device("cpu"), seed=3)
    images = [rng.integers(0, 256, (120, 170, 3), dtype=np.uint8), rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)]
    batched = tiny_segmenter.segment_batch([SegmentJob(rgb, bank) for rgb in images])
    for rgb, arrays in zip(images, batched):
        loop = naclip_loop(tiny_segmenter, rgb, bank)
        assert loop["labels"].shape == rgb.shape[:2]
        assert (loop["labels"] == arrays.labels).mean() > 0.999
        assert np.allclose(loop["confidence"], arrays.confidence, atol=1e-5)
