"""Kernels whose CPU results do not depend on how many threads torch uses.

A CPU kernel of PyTorch splits its work into one chunk per thread. Most kernels compute
every element the same way whatever the chunk, but a few do not, so the same image gives
other float32 values (and, at near-ties, other labels) at 1 thread than at 2. Measured
on torch 2.14 (``tests/test_thread_invariance.py`` checks each one):

- ``torch.softmax`` over a dimension that is not the last: the tail of each chunk takes a
  scalar ``exp``, the rest a vectorised one;
- ``torch.sigmoid`` (so open_clip's ``QuickGELU``) and ``GELU(approximate="tanh")``: the
  same split between a scalar and a vectorised formula;
- ``F.interpolate(mode="bilinear")`` on images of 3 channels: another algorithm is chosen
  at 1 thread than at several.

The versions here are built only from kernels that round every element once and the same
way in any chunk (gathers, ``+``, ``*``, ``/``, and ``exp``/``tanh``, which torch computes
with one vectorised routine over the whole chunk, tail included). They differ from the
kernels they replace by an ulp or so, and never with the thread count. This is what lets a
Ray actor running 1 thread give exactly the labels of a local run using every core
(docs/design.md §2.5).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def softmax(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``torch.softmax(x, dim)`` computed as ``exp(x - max) / sum``: -inf entries get 0, as
    there; a slice that is all -inf gets NaN, as there."""
    shifted = (x - x.amax(dim, keepdim=True)).exp_()
    return shifted.div_(shifted.sum(dim, keepdim=True))


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for (..., h, w):
    PyTorch's float32 source positions and weights, the width interpolated first, then the
    height. Always a new tensor."""
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x.clone()
    return _lerp_axis(_lerp_axis(x, -1, out_w, in_w), -2, out_h, in_h)


def linear_weights(out_size: int, in_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of PyTorch's bilinear resize (``align_corners=False``),
    rounded as its CPU and CUDA kernels round them: a float32 scale ``in / out`` and
    ``src = scale * (i + 0.5) - 0.5`` as one fused multiply-add, rounded once to float32
    (exact in float64 for any image size)."""
    scale = torch.tensor(float(in_size), dtype=torch.float32) / torch.tensor(float(out_size), dtype=torch.float32)
    src = (scale.double() * (torch.arange(out_size, dtype=torch.float64) + 0.5) - 0.5).float()
    src = src.clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    weight = (src - low).clamp(0, 1)
    return low.to(device), high.to(device), weight.to(device)


def _lerp_axis(x: torch.Tensor, axis: int, out_size: int, in_size: int) -> torch.Tensor:
    if out_size == in_size:
        return x
    low, high, weight = linear_weights(out_size, in_size, x.device)
    weight = weight.to(x.dtype)
    if axis == -2:
        weight = weight[:, None]
    return x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight


class QuickGELU(nn.Module):
    """open_clip's ``QuickGELU`` (``x * sigmoid(1.702 x)``) as ``x / (1 + exp(-1.702 x))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / ((-1.702 * x).exp() + 1)


class SiLU(nn.Module):
    """``nn.SiLU`` (``x * sigmoid(x)``) as ``x / (1 + exp(-x))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / ((-x).exp() + 1)


class TanhGELU(nn.Module):
    """``nn.GELU(approximate="tanh")``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = (x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)
        return x * 0.5 * (inner.tanh() + 1)


def make_thread_invariant(model: nn.Module) -> int:
    """Swap, in place, the activations of ``model`` whose CPU kernels depend on the thread
    count for the versions above; returns how many were swapped. Idempotent."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            replacement = _invariant_activation(child)
            if replacement is not None:
                setattr(parent, name, replacement)
                swapped += 1
    return swapped


def _invariant_activation(module: nn.Module) -> nn.Module | None:
    if type(module).__name__ == "QuickGELU" and not isinstance(module, QuickGELU):
        return QuickGELU()
    if type(module) is nn.SiLU:
        return SiLU()
    if isinstance(module, nn.GELU) and module.approximate == "tanh":
        return TanhGELU()
    return None
