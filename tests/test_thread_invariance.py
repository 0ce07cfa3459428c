"""Results do not depend on how many threads torch runs (docs/design.md §2.5).

A Ray actor runs the threads Ray gives it (1 by default) while a local run uses every
core; both must give the same labels, bit for bit. Three layers of checks:

- every kernel the dense-CLIP path runs on the CPU gives identical values at 1 to 4
  threads on awkward shapes (the thread-invariant versions in ``segment.numerics``, and
  the torch kernels used as they are, in fp32 and in bf16: if a torch upgrade makes one of
  them depend on the chunking, this says which);
- the segmenter's arrays (labels, confidence, runner-up, margin) are identical at 1, 2
  and 3 threads, for each attention variant, PAMR, whole-image inference, a batch, a class
  filter and a QuickGELU tower;
- the command line in two processes, one started with ``OMP_NUM_THREADS=1`` and one with
  every core, writes the same label map and the same per-class confidences.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG
from PIL import Image
from threads import torch_threads

from openseg_r.schemas import ClassPrompts, PromptSet
from openseg_r.segmenters.base import ClassFilter, SegmentJob
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig, numerics
from openseg_r.segmenters.dense_clip.loading import load_clip

ROOT = Path(__file__).resolve().parents[1]
THREADS = (1, 2, 3, 4)


def at_each_thread_count(compute, counts=THREADS) -> list:
    results = []
    for count in counts:
        with torch_threads(count):
            results.append(compute())
    return results


def assert_identical(results: list, what: str) -> None:
    first = results[0]
    for count, other in zip(THREADS[1:], results[1:]):
        if isinstance(first, torch.Tensor):
            differ = int((first != other).sum()) if first.shape == other.shape else -1
            assert differ == 0, f"{what}: {differ} value(s) differ between 1 and {count} threads"
        else:
            for name in first:
                assert np.array_equal(first[name], other[name]), f"{what}: {name} differs between 1 and {count} threads"


# ----------------------------------------------------------------------------- kernels

GEN = torch.Generator().manual_seed(7)


def noise(*shape, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(shape, generator=GEN) * scale


LOGITS = noise(21, 375, 500)
LOGITS_MASKED = LOGITS.clone().index_fill_(0, torch.tensor([3, 4, 17]), float("-inf"))
IMAGE = noise(1, 3, 375, 500, scale=1.0)
ACTIVATIONS = noise(6, 197, 257)  # 303,534 values: chunks of any thread count end mid-vector
TOKENS = noise(7, 197, 64, scale=1.0)
ATTENTION_WEIGHTS = torch.nn.MultiheadAttention(64, 2, batch_first=True).eval()
PATCH_FILTERS = noise(64, 3, 16, 16)
BIAS = noise(197, 197)
POSITIONS = noise(1, 768, 14, 14)
TOKENS_768 = noise(3, 197, 768, scale=1.0).to(torch.bfloat16)  # `auto` is bf16 on CPUs that compute it
MLP_WEIGHTS = noise(3072, 768, scale=0.02).to(torch.bfloat16)

OUR_KERNELS = {
    "softmax over classes": lambda: numerics.softmax(LOGITS, dim=0),
    "softmax over classes, some -inf": lambda: numerics.softmax(LOGITS_MASKED, dim=0),
    "bilinear, 3-channel image down": lambda: numerics.resize_bilinear(IMAGE, (336, 448)),
    "bilinear, 3-channel image up": lambda: numerics.resize_bilinear(IMAGE[:, :, :301, :333], (375, 500)),
    "bilinear, 21 channels up": lambda: numerics.resize_bilinear(LOGITS[None, :, :42, :56], (375, 500)),
    "bilinear, windows": lambda: numerics.resize_bilinear(
        LOGITS[:, :14, :14].reshape(1, 21, 14, 14).expand(6, -1, -1, -1), (224, 224)
    ),
    "QuickGELU": lambda: numerics.QuickGELU()(ACTIVATIONS),
    "SiLU": lambda: numerics.SiLU()(ACTIVATIONS),
    "GELU tanh": lambda: numerics.TanhGELU()(ACTIVATIONS),
}

TORCH_KERNELS = {  # used as they are on the dense-CLIP path
    "GELU (erf)": lambda: F.gelu(ACTIVATIONS),
    "exp": lambda: ACTIVATIONS.exp(),
    "tanh": lambda: ACTIVATIONS.tanh(),
    "layer norm": lambda: F.layer_norm(ACTIVATIONS, (257,)),
    "softmax over the last dim": lambda: ACTIVATIONS.softmax(-1),
    "linear": lambda: F.linear(ACTIVATIONS, ACTIVATIONS[0, :131]),
    "matmul, 3 windows": lambda: ACTIVATIONS[:3] @ ACTIVATIONS[0, :5].T,
    "patch convolution": lambda: F.conv2d(IMAGE[:, :, :224, :224], PATCH_FILTERS, stride=16),
    "multi-head attention": lambda: ATTENTION_WEIGHTS(TOKENS, TOKENS, TOKENS, need_weights=False)[0].detach(),
    "scaled dot-product attention": lambda: F.scaled_dot_product_attention(
        TOKENS.view(7, 197, 2, 32).transpose(1, 2),
        TOKENS.view(7, 197, 2, 32).transpose(1, 2),
        TOKENS.view(7, 197, 2, 32).transpose(1, 2),
        attn_mask=BIAS,
    ),
    "bicubic positional embedding": lambda: F.interpolate(
        POSITIONS,
        scale_factor=(21.1 / 14, 28.1 / 14),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
    ),
    "L2 normalise": lambda: F.normalize(ACTIVATIONS, dim=-1),
    "bf16 linear, ViT-B MLP shape": lambda: F.linear(TOKENS_768, MLP_WEIGHTS),
    "bf16 layer norm": lambda: F.layer_norm(TOKENS_768, (768,)),
    "bf16 QuickGELU": lambda: numerics.QuickGELU()(TOKENS_768),
    "mean over slots": lambda: LOGITS.view(3, 7, 375, 500).mean(0),
    "std over neighbours": lambda: LOGITS[:18].view(3, 6, 375, 500).std(1),
    "top-2 over classes": lambda: LOGITS.topk(2, dim=0).values,
    "max into channels": lambda: torch.full((6, 14, 14, 5), float("-inf")).scatter_reduce(
        -1,
        torch.arange(21).remainder(5).expand(6, 14, 14, 21),
        LOGITS[:, :14, :14].permute(1, 2, 0).expand(6, -1, -1, -1),
        reduce="amax",
        include_self=True,
    ),
}


@pytest.mark.parametrize("name", list(OUR_KERNELS) + list(TORCH_KERNELS))
def test_each_kernel_gives_the_same_values_at_any_thread_count(name):
    kernel = OUR_KERNELS.get(name) or TORCH_KERNELS[name]
    with torch.inference_mode():
        assert_identical(at_each_thread_count(kernel), name)


def test_the_invariant_kernels_compute_what_torch_computes():
    """To an ulp or so: they replace torch's kernels, not the method."""
    assert torch.allclose(numerics.softmax(LOGITS, 0), torch.softmax(LOGITS, 0), rtol=0, atol=1e-6)
    masked = numerics.softmax(LOGITS_MASKED, 0)
    assert torch.equal(masked[[3, 4, 17]], torch.zeros_like(masked[[3, 4, 17]]))
    assert torch.allclose(masked, torch.softmax(LOGITS_MASKED, 0), rtol=0, atol=1e-6)
    assert torch.isnan(numerics.softmax(torch.full((3, 2), float("-inf")), 0)).all()  # as torch.softmax
    for source, size in (
        ((1, 3, 375, 500), (336, 448)),
        ((2, 5, 14, 14), (224, 224)),
        ((1, 4, 40, 30), (7, 90)),
        ((3, 9, 11), (9, 11)),
    ):
        x = noise(*source)
        expected = F.interpolate(x if x.dim() == 4 else x[None], size=size, mode="bilinear", align_corners=False)
        got = numerics.resize_bilinear(x, size)
        assert got.shape == x.shape[:-2] + size and got.data_ptr() != x.data_ptr()
        assert torch.allclose(got.reshape(expected.shape), expected, rtol=0, atol=1e-5), (source, size)
    x = ACTIVATIONS
    assert torch.allclose(numerics.QuickGELU()(x), x * torch.sigmoid(1.702 * x), rtol=0, atol=1e-5)
    assert torch.allclose(numerics.SiLU()(x), F.silu(x), rtol=0, atol=1e-5)
    assert torch.allclose(numerics.TanhGELU()(x), F.gelu(x, approximate="tanh"), rtol=0, atol=1e-5)


def test_the_activations_that_depend_on_threads_are_swapped_and_the_rest_kept():
    model = torch.nn.Sequential(
        open_clip.transformer.QuickGELU(),
        torch.nn.SiLU(),
        torch.nn.GELU("tanh"),
        torch.nn.GELU(),
        torch.nn.Sequential(open_clip.transformer.QuickGELU()),
    )
    assert numerics.make_thread_invariant(model) == 4
    assert [type(m) for m in model[:4]] == [numerics.QuickGELU, numerics.SiLU, numerics.TanhGELU, torch.nn.GELU]
    assert type(model[4][0]) is numerics.QuickGELU
    assert numerics.make_thread_invariant(model) == 0  # idempotent


# ----------------------------------------------------------------------------- the segmenter


def prompts(names: list[str], slots=(None,)) -> PromptSet:
    return PromptSet(
        templates="vild",
        score_order="max_then_softmax",
        classes=[ClassPrompts(name=n, queries=[n, f"a {n}"], slots=list(slots), source="bare") for n in names],
    )


NAMES = ["background", "person", "chair", "dining table", "bottle", "potted plant", "sofa", "tv monitor"]


@pytest.fixture(scope="module")
def quickgelu_clip(tmp_path_factory):
    """The tiny CLIP with OpenAI's QuickGELU, whose sigmoid depends on the thread count."""
    folder = tmp_path_factory.mktemp("tiny_quickgelu")
    config = folder / "tiny-clip-quickgelu.json"
    config.write_text(json.dumps({**TINY_CONFIG, "quick_gelu": True}))
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    weights = folder / "tiny-clip-quickgelu.pt"
    torch.save(open_clip.create_model("tiny-clip-quickgelu", pretrained=None).state_dict(), weights)
    return load_clip(str(config), str(weights), device="cpu")


def segment_arrays(clip, config: SegmenterConfig, images, class_filter=None, slots=(None,)) -> dict:
    """Everything a fresh segmenter returns for ``images`` (its text embeddings computed here too)."""
    segmenter = CLIPSegmenter(clip, config)
    bank = segmenter.query_bank(prompts(NAMES, slots))
    jobs = [SegmentJob(rgb, bank, class_filter, 40.0, 0, 0.2, None) for rgb in images]
    out = {}
    for number, arrays in enumerate(segmenter.segment_batch(jobs)):
        for field in ("labels", "confidence", "runner_up", "margin", "runner_up_confidence"):
            out[f"{number}.{field}"] = getattr(arrays, field)
    return out


CASES = {
    "naclip, sliding windows": ({}, None, (None,)),
    "sclip with PAMR": ({"attention": "sclip", "pamr_steps": 2, "short_side": 224}, None, (None,)),
    "vanilla, whole image": ({"attention": "vanilla", "slide": False}, None, (None,)),
    "hard class filter, two slots": (
        {"short_side": 224},
        ClassFilter(present=[1, 2, 3], mode="hard", keep=(0,)),
        ("category", "attributes"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_segmenter_gives_identical_arrays_at_1_2_and_3_threads(case, tiny_clip, voc):
    overrides, class_filter, slots = CASES[case]
    photo = voc["rgb"]
    images = [photo, np.ascontiguousarray(photo[37:300, 11:419])]  # a batch of two sizes
    results = at_each_thread_count(
        lambda: segment_arrays(tiny_clip, SegmenterConfig(**overrides), images, class_filter, slots), (1, 2, 3)
    )
    assert_identical(results, case)
    assert len(np.unique(results[0]["0.labels"])) > 1  # a map, not one class: the labels had a chance to differ


def test_in_bf16_too_the_segmenter_gives_identical_arrays_at_1_2_and_3_threads(tiny_model_files, voc):
    config, weights = tiny_model_files
    clip = load_clip(str(config), str(weights), device="cpu", precision="bf16")
    results = at_each_thread_count(
        lambda: segment_arrays(clip, SegmenterConfig(pamr_steps=2, short_side=224), [voc["rgb"]]), (1, 2, 3)
    )
    assert_identical(results, "bf16")


def test_a_quickgelu_tower_gives_identical_arrays_at_1_2_and_3_threads(quickgelu_clip, voc):
    results = at_each_thread_count(
        lambda: segment_arrays(quickgelu_clip, SegmenterConfig(short_side=224), [voc["rgb"]]), (1, 2, 3)
    )
    assert_identical(results, "QuickGELU tower")


# ----------------------------------------------------------------------------- two processes


def test_two_processes_with_1_and_many_threads_write_the_same_segmentation(tmp_path, tiny_model_files):
    """torch caps ``OMP_NUM_THREADS`` at the machine's cores: "many" is all of them (2 or more)."""
    many = min(4, len(os.sched_getaffinity(0)))
    if many < 2:
        pytest.skip("one core: a process cannot run more than one torch thread here")
    config, weights = tiny_model_files
    outputs = {}
    for threads in (1, many):
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(threads))
        reported = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert reported.stdout.strip() == str(threads), reported.stderr
        out = tmp_path / f"threads-{threads}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "openseg_r.cli",
                "segment",
                str(ROOT / "examples" / "voc.jpg"),
                "--vocab",
                "voc21",
                "--lmm",
                f"scripted:{ROOT / 'examples' / 'voc_reasoning.json'}",
                "--clip-model",
                str(config),
                "--clip-pretrained",
                str(weights),
                "--pamr-steps",
                "2",
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads((out / "result.json").read_text())
        outputs[threads] = (
            np.asarray(Image.open(out / "labels.png")),
            [(c["name"], c["pixels"], c["mean_confidence"]) for c in result["classes"]],
        )
    assert np.array_equal(outputs[1][0], outputs[many][0])
    assert outputs[1][1] == outputs[many][1]
