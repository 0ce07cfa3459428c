"""ProxyCLIP's dense features: a window through the VFM and through CLIP, joined in CLIP's
last block by the proxy attention (:mod:`openseg_r.segmenters.proxyclip.attention`).

A window is padded first, as the reference pads it: zeros (in CLIP's normalised space, so
CLIP's mean colour) split evenly on both sides, up to a multiple of 56 pixels (the
reference's constant, which both towers' patch sizes divide: 8, 14; a VFM patch of 16 makes
it 112). The features come back on the VFM's grid of the padded window;
:meth:`window_padding` tells the segmenter what to cut from the resized scores.

CLIP sees the window as normalised for it; the VFM sees the same pixels re-normalised with
ImageNet's mean and standard deviation (the reference's ``norm(unnorm(img))``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from openseg_r.errors import ConfigError
from openseg_r.segmenters.dense_clip.dense import DenseCLIPEncoder, check_supported
from openseg_r.segmenters.proxyclip.attention import proxy_block, proxy_weights
from openseg_r.segmenters.proxyclip.vfm import IMAGENET_MEAN, IMAGENET_STD, VisionFoundationModel

REFERENCE_PAD_MULTIPLE = 56


class ProxyCLIPEncoder:
    """Normalised windows (B, 3, H, W) -> L2-normalised features (B, I, J, D) on the VFM's grid."""

    def __init__(
        self,
        clip_model,
        vfm: VisionFoundationModel,
        *,
        beta: float = 1.2,
        gamma: float = 3.0,
        clip_mean=(0.48145466, 0.4578275, 0.40821073),
        clip_std=(0.26862954, 0.26130258, 0.27577711),
        max_vfm_tokens: int = 16384,
    ) -> None:
        visual = getattr(clip_model, "visual", clip_model)
        check_supported(visual, "ProxyCLIP")
        self.clip = DenseCLIPEncoder(clip_model, "vanilla")  # its positional-embedding resize
        self.visual = visual
        self.vfm = vfm
        self.beta, self.gamma = beta, gamma
        self.max_vfm_tokens = max_vfm_tokens
        self.patch_size = self.clip.patch_size
        self.pad_multiple = math.lcm(REFERENCE_PAD_MULTIPLE, vfm.patch_size)
        device = visual.conv1.weight.device
        self._to_imagenet = (  # x * clip_std + clip_mean, then (. - mean) / std, per channel
            torch.tensor(clip_std, device=device).view(1, 3, 1, 1)
            / torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1),
            (torch.tensor(clip_mean, device=device) - torch.tensor(IMAGENET_MEAN, device=device)).view(1, 3, 1, 1)
            / torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1),
        )

    @property
    def embed_dim(self) -> int:
        return self.visual.proj.shape[1]

    def window_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zeros added to a ``height`` x ``width`` window."""
        extra_w, extra_h = -width % self.pad_multiple, -height % self.pad_multiple
        return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2

    def vfm_grid(self, height: int, width: int) -> tuple[int, int]:
        """The VFM's patch grid of a (padded) window."""
        return height // self.vfm.patch_size, width // self.vfm.patch_size

    def check_window(self, height: int, width: int) -> None:
        """One line when a window's VFM grid is too large for the proxy attention's square."""
        left, right, top, bottom = self.window_padding(height, width)
        grid = self.vfm_grid(height + top + bottom, width + left + right)
        if grid[0] * grid[1] > self.max_vfm_tokens:
            raise ConfigError(
                f"a {width}x{height} window is {grid[1]}x{grid[0]} VFM patches, more than max_vfm_tokens "
                f"({self.max_vfm_tokens}): the proxy attention would hold their square; slide smaller windows "
                "(slide=true, crop) or lower short_side"
            )

    def vfm_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VFM's patch features (B, C, I, J) of CLIP-normalised, padded windows."""
        scale, shift = self._to_imagenet
        return self.vfm.features(pixels.float() * scale + shift)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        self.check_window(height, width)
        left, right, top, bottom = self.window_padding(height, width)
        if left or right or top or bottom:
            pixels = F.pad(pixels, (left, right, top, bottom))
        weights = proxy_weights(self.vfm_features(pixels), self.beta, self.gamma)
        return self.clip_features(pixels, weights)

    def clip_features(self, pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """CLIP on padded windows with the proxy ``weights`` in its last block -> (B, I, J, D)."""
        visual = self.visual
        clip_grid = self.clip.grid_for(*pixels.shape[-2:])
        vfm_grid = self.vfm_grid(*pixels.shape[-2:])
        pixels = pixels.to(visual.conv1.weight.dtype)
        x = self.clip.before_last_block(pixels, self.clip.positional_embedding(clip_grid))
        blocks = visual.transformer.resblocks
        x = proxy_block(blocks[-1], x, weights, clip_grid, vfm_grid)
        patches = F.normalize((visual.ln_post(x) @ visual.proj).float(), dim=-1)
        return patches.reshape(pixels.shape[0], vfm_grid[0], vfm_grid[1], -1)
