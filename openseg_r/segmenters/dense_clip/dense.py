"""Dense (per-patch) CLIP image features from an open_clip ViT."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from openseg_r.errors import ConfigError
from openseg_r.segmenters.dense_clip.attention import ATTENTION_VARIANTS, attention_bias, last_block


class DenseCLIPEncoder:
    """Turns a batch of normalised images into L2-normalised patch embeddings.

    Works at any input size: the positional embedding is interpolated (bicubic, as
    NACLIP does) to the patch grid and cached per grid size.

    With ``compile=True`` the transformer pass (patch embedding to normalised features) runs
    through ``torch.compile(dynamic=False)``: one graph per input shape, compiled on its first
    call (seconds to minutes), after which the elementwise work between the matmuls is fused,
    which matters on a GPU where those memory-bound steps cost a large share of a ViT-B's
    time. Keep the batch shape fixed (``window_batch_size``) so the graphs are reused. If
    compilation fails (no C++ compiler, an unsupported op), a one-line message goes to
    stderr, ``compile_error`` says why, and the encoder runs eagerly from then on.
    """

    def __init__(
        self, model: nn.Module, attention: str = "naclip", gaussian_sigma: float = 5.0, *, compile: bool = False
    ) -> None:
        if attention not in ATTENTION_VARIANTS:
            raise ConfigError(f"unknown attention variant {attention!r}; choose from {', '.join(ATTENTION_VARIANTS)}")
        visual = getattr(model, "visual", model)
        check_supported(visual)
        self.visual = visual
        self.attention = attention
        self.gaussian_sigma = gaussian_sigma
        self.compile = compile
        self.compile_error: str | None = None
        self.patch_size = _pair(visual.conv1.kernel_size)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._compiled = torch.compile(self._encode, dynamic=False) if compile else None

    @property
    def embed_dim(self) -> int:
        return self.visual.proj.shape[1]

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size[0], width // self.patch_size[1]

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1 + gh*gw, width) positional embedding for a patch grid, in float32.

        Resized exactly as NACLIP's ``interpolate_pos_encoding`` does (``clip/model.py``): bicubic
        with ``scale_factor=((gh + 0.1) / n, (gw + 0.1) / n)`` and ``recompute_scale_factor=False``,
        so the sampling positions follow the scale ``(g + 0.1) / n`` rather than ``g / n``; computed
        in float32 (NACLIP keeps this tensor in float32 even in half precision) and cast to the
        tokens' dtype only when it is added. At the trained grid the embedding is used unchanged.
        NACLIP skips the resize whenever the token count matches (so a 7x28 grid would get the
        14x14 embedding read row by row); here only the trained grid itself skips it.
        """
        cached = self._pos_cache.get(grid)
        if cached is not None:
            return cached
        pos = self.visual.positional_embedding.float()
        result = torch.cat([pos[:1], resize_positions(pos[1:], grid)], dim=0)
        self._pos_cache[grid] = result
        return result

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (B, 3, H, W) -> features (B, H/p, W/p, D), L2-normalised, in float32."""
        grid = self.grid_for(pixels.shape[-2], pixels.shape[-1])
        pos = self.positional_embedding(grid)
        bias = attention_bias(self.attention, grid, self.gaussian_sigma, pixels.device, _compute_dtype(pixels))
        if self._compiled is not None:
            try:
                return self._compiled(pixels, pos, bias, grid)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # any compiler failure: fall back, say so once
                self._compiled = None
                self.compile_error = _describe(exc)
                print(
                    f"openseg-r: torch.compile failed, running the vision tower eagerly ({self.compile_error})",
                    file=sys.stderr,
                )
        return self._encode(pixels, pos, bias, grid)

    def _encode(
        self, pixels: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor | None, grid: tuple[int, int]
    ) -> torch.Tensor:
        """The transformer pass; the caches (positional embedding, attention bias) are read
        outside, so that under ``torch.compile`` this is one pure graph per shape."""
        visual = self.visual
        x = self.before_last_block(pixels, pos)
        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", True)
        if self.attention == "vanilla" and not batch_first:
            x = blocks[-1](x.transpose(0, 1)).transpose(0, 1)
        else:
            x = last_block(blocks[-1], x, self.attention, grid, self.gaussian_sigma, bias=bias)
        patches = visual.ln_post(x[:, 1:, :]) @ visual.proj
        patches = F.normalize(patches.float(), dim=-1)
        return patches.reshape(pixels.shape[0], grid[0], grid[1], -1)

    def before_last_block(self, pixels: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Patch embedding, CLS, positions, ``ln_pre`` and every block but the last: the
        tokens (B, 1 + gh*gw, D), batch first, that the last block (replaced) takes."""
        visual = self.visual
        x = visual.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        x = visual.ln_pre(x)
        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        return x if batch_first else x.transpose(0, 1)


def resize_positions(patch_pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A square (n*n, D) patch positional table at ``grid`` (gh*gw, D), as NACLIP's and
    DINO's ``interpolate_pos_encoding`` resize it: bicubic with ``scale_factor = (g + 0.1) /
    n`` and ``recompute_scale_factor=False``; unchanged at the trained grid."""
    side = int(round(patch_pos.shape[0] ** 0.5))
    if (side, side) == grid:
        return patch_pos
    patch = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch,
        mode="bicubic",
        scale_factor=((grid[0] + 0.1) / side, (grid[1] + 0.1) / side),
        align_corners=False,
        recompute_scale_factor=False,
    )
    if tuple(patch.shape[-2:]) != grid:  # floor(n * (g + 0.1) / n) is g for any sane grid
        raise ValueError(f"positional embedding resized to {tuple(patch.shape[-2:])}, expected {grid}")
    return patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)


def _compute_dtype(pixels: torch.Tensor) -> torch.dtype:
    """The dtype the attention runs in: autocast's, when it is on for this device, else the input's."""
    device = pixels.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return pixels.dtype


def _describe(exc: BaseException) -> str:
    """One line: the innermost cause (dynamo wraps the compiler's own error in its own)."""
    while (inner := getattr(exc, "inner_exception", None) or exc.__cause__) is not None:
        exc = inner
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else 'no message'}"


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def check_supported(visual: nn.Module, what: str = "dense CLIP") -> None:
    """One line when ``visual`` is not an open_clip ViT whose last block can be replaced."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    missing = [name for name in needed if getattr(visual, name, None) is None]
    if missing:
        raise ConfigError(
            f"{what} needs an open_clip VisionTransformer with a projection; this model lacks {', '.join(missing)}"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise ConfigError(f"{what} does not support vision towers with attentional pooling (CoCa-style)")
    last = visual.transformer.resblocks[-1]
    if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention):
        raise ConfigError(f"{what} needs vision blocks built on torch.nn.MultiheadAttention")
