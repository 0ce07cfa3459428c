"""Training-free replacements for the last vision block of CLIP (docs/design.md §2).

With ``y = ln_1(x)`` and per-head ``q, k, v`` from the block's own in-projection,
``s = head_dim ** -0.5`` and ``A(z) = softmax(z, dim=-1)``:

============  ============================================================  =========  =====
variant       block output                                                   residual   FFN
============  ============================================================  =========  =====
vanilla       the unchanged block                                            yes        yes
maskclip      ``out_proj(v)`` (value path, no query-key attention)           yes        yes
sclip         ``out_proj((A(s·q·qᵀ) + A(s·k·kᵀ))·v)``                        yes        yes
clearclip     ``out_proj(A(s·q·qᵀ)·v)``                                      no         no
naclip        ``out_proj(A(s·k·kᵀ + G)·v)``, G a Gaussian over the grid     no         no
============  ============================================================  =========  =====

G is ``exp(-Δ²/(2σ²))`` over patch-grid distances (peak 1, σ = 5 by default),
with 0 in the CLS row and column.

Every ``A(·)·v`` runs as ``torch.nn.functional.scaled_dot_product_attention`` (its default
scale is ``s``; G goes in as an additive ``attn_mask``), so the (tokens x tokens) weights
are never materialised on a GPU: fused kernels (memory-efficient attention, which takes an
additive bias; flash attention when there is none) compute the same softmax. SCLIP's sum
of two softmaxes times v is split, by linearity, into two fused calls. G is built once per
(grid, σ, device, dtype) and cached.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from openseg_r.segmenters.dense_clip.options import ATTENTION_VARIANTS  # noqa: F401  (re-exported)


def gaussian_bias(grid_h: int, grid_w: int, sigma: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The NACLIP neighbourhood bias, shape ``(1 + grid_h*grid_w)²``; CLS row and column are 0."""
    rows = torch.arange(grid_h, device=device, dtype=torch.float32)
    cols = torch.arange(grid_w, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)
    squared = torch.cdist(coords, coords).pow(2)
    patches = torch.exp(-squared / (2.0 * sigma * sigma))
    bias = torch.zeros(1 + grid_h * grid_w, 1 + grid_h * grid_w, device=device, dtype=torch.float32)
    bias[1:, 1:] = patches
    return bias.to(dtype)


@functools.lru_cache(maxsize=8)
def cached_gaussian_bias(grid: tuple[int, int], sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`gaussian_bias`, built once per (grid, sigma, device, dtype): every forward pass at
    a window size reuses it (the bias of a 14x14 grid is 197² values, of a 2048-pixel-wide
    whole image up to millions, so rebuilding it per call costs time and allocations)."""
    with torch.inference_mode(False):  # a normal tensor: usable inside and outside inference mode
        return gaussian_bias(*grid, sigma, device=device, dtype=dtype)


def attention_bias(variant: str, grid: tuple[int, int], sigma: float, device, dtype) -> torch.Tensor | None:
    """The additive attention bias ``variant`` needs (NACLIP's G), or None."""
    if variant != "naclip":
        return None
    return cached_gaussian_bias(tuple(grid), float(sigma), torch.device(device), dtype)


def last_block(
    block: nn.Module,
    x: torch.Tensor,
    variant: str,
    grid: tuple[int, int],
    sigma: float = 5.0,
    *,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``block`` on tokens ``x`` (batch, 1 + grid_h*grid_w, width) with the chosen variant.

    ``bias``: NACLIP's G, precomputed (:func:`attention_bias`) by a caller that runs this
    inside ``torch.compile``, where a cache lookup would be traced; None looks it up here."""
    if variant == "vanilla":
        return block(x)
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r}; choose from {', '.join(ATTENTION_VARIANTS)}")
    attn: nn.MultiheadAttention = block.attn
    heads = attn.num_heads
    batch, tokens, width = x.shape
    head_dim = width // heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))

    sdpa = F.scaled_dot_product_attention  # default scale head_dim ** -0.5, softmax in float32
    if variant == "maskclip":
        mixed = v
    elif variant == "clearclip":
        mixed = sdpa(q, q, v)
    elif variant == "sclip":  # (A(s·q·qᵀ) + A(s·k·kᵀ))·v = A(s·q·qᵀ)·v + A(s·k·kᵀ)·v
        mixed = sdpa(q, q, v) + sdpa(k, k, v)
    else:  # naclip
        if bias is None:
            bias = attention_bias(variant, grid, sigma, v.device, v.dtype)
        mixed = sdpa(k, k, v, attn_mask=bias.to(v.dtype))

    out = attn.out_proj(mixed.transpose(1, 2).reshape(batch, tokens, width))
    out = _layer_scale(block, "ls_1", out)
    if variant in ("naclip", "clearclip"):
        return out
    x = x + out
    return x + _layer_scale(block, "ls_2", block.mlp(block.ln_2(x)))


def _layer_scale(block: nn.Module, name: str, value: torch.Tensor) -> torch.Tensor:
    scale = getattr(block, name, None)
    return value if scale is None else scale(value)
