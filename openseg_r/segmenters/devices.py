"""Where and in which precision a segmenter runs: shared by every kind (``device`` and
``precision`` are ModelOptions fields, not a kind's options)."""

from __future__ import annotations

import torch

from openseg_r.errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available")
    return device


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16): there bf16
    runs the vision tower about twice as fast as fp32; elsewhere it is emulated, and slower."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
            return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
        except Exception:  # noqa: BLE001 (a probe: any failure means "not known to have it")
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA; on a CPU, bf16 where it computes bf16 natively
    (:func:`cpu_computes_bf16`), else fp32 (half precision is slow there). Results in bf16
    differ from fp32 at near-ties only (the share of identical labels is in docs/design.md
    §2.2); ``fp32`` pins them, as the published-protocol presets do on a CPU.

    fp16 and bf16 cast the whole model (weights and activations), not ``torch.autocast``
    over float32 weights: autocast re-casts every weight on every forward pass (its cast
    cache only keeps weights that require grad), keeps the activations between the
    matmuls in float32 (twice the memory traffic for the layer norms, residual adds and
    GELU, a large share of a ViT-B's time at 197 tokens) and turns off PyTorch's fused
    multi-head-attention path. The cast loses little: the kernels still reduce in float32
    (matmul accumulation, layer-norm statistics, the attention softmax), the dense
    features are normalised in float32, and OpenAI's CLIP weights are themselves fp16, the
    precision NACLIP's reference runs them in on a GPU. ``benchmarks/bench_gpu.py --mode
    both`` measures the two side by side."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_computes_bf16() else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
