"""Vision foundation models through transformers (no ``torch.hub``): patch features as
ProxyCLIP's reference reads them.

- DINO (``facebook/dino-vitb8``, ``dino-vitb16``; a transformers ``ViTModel``): the last
  block's tokens after the final LayerNorm (DINO's ``get_intermediate_layers(x)[0]``),
  patches only. The positional embedding is resized as DINO's own code resizes it (bicubic,
  ``scale_factor`` from the grid plus 0.1), not as transformers' ``ViTModel`` does.
- DINOv2 with registers (``facebook/dinov2-with-registers-base``): transformers' forward,
  whose positional resize (bicubic, antialiased, to the grid) is the reference
  architecture's for its ``*_reg`` models; patches only, after the final LayerNorm (DINOv2's
  ``get_intermediate_layers(x, reshape=True)[0]``).

Inputs are ImageNet-normalised; :meth:`VisionFoundationModel.features` returns
``(B, C, H/p, W/p)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from openseg_r.errors import WeightsError, clipped
from openseg_r.segmenters.dense_clip.dense import resize_positions
from openseg_r.segmenters.hub import ModelFiles, locate
from openseg_r.segmenters.proxyclip.options import VFMS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_TYPES = {"dino": ("vit",), "dinov2": ("dinov2_with_registers",)}


@dataclass
class VisionFoundationModel:
    """A loaded VFM: the transformers model, how it is read, and what it is."""

    model: nn.Module
    family: str  # "dino" or "dinov2"
    patch_size: int
    identity: str  # the weights: hub id at its commit, or the folder with its weights' size and time

    def __post_init__(self) -> None:
        self._positions: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised ``pixels`` (B, 3, H, W) -> patch features (B, C, H/p, W/p)."""
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        pixels = pixels.to(self.dtype)
        if self.family == "dinov2":
            tokens = self.model(pixel_values=pixels).last_hidden_state
            tokens = tokens[:, 1 + self.model.config.num_register_tokens :]
        else:
            tokens = self._dino_tokens(pixels, grid)
        return tokens.reshape(pixels.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)

    def _dino_tokens(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        embeddings = self.model.embeddings
        patches = embeddings.patch_embeddings(pixels)
        cls = embeddings.cls_token.to(patches.dtype).expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self._dino_positions(grid).to(patches.dtype)
        for layer in self.model.layers:
            x = layer(x, None)
        return self.model.layernorm(x)[:, 1:]

    def _dino_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """DINO's ``interpolate_pos_encoding``: the trained grid as it is, any other grid
        resized bicubically with ``scale_factor = (g + 0.1) / n`` (in float32)."""
        cached = self._positions.get(grid)
        if cached is None:
            table = self.model.embeddings.position_embeddings[0].float()
            cached = torch.cat([table[:1], resize_positions(table[1:], grid)], dim=0)
            self._positions[grid] = cached
        return cached


def locate_vfm(name: str, weights: str, revision: str | None = None) -> ModelFiles:
    """The VFM ``name``'s folder (a hub id is downloaded or read from the cache), checked
    before anything is built: one line for missing, gated, corrupt or other-architecture
    weights."""
    choice = VFMS[name]
    return locate(weights, revision, what=f"{choice.summary} (vfm {name})", model_types=MODEL_TYPES[choice.family])


def load_vfm(name: str, files: ModelFiles, *, device: torch.device, dtype: torch.dtype) -> VisionFoundationModel:
    """The located VFM, built, on ``device`` in ``dtype``, in eval mode."""
    family = VFMS[name].family
    try:
        if family == "dinov2":
            from transformers import Dinov2WithRegistersModel

            model = Dinov2WithRegistersModel.from_pretrained(files.folder, dtype=dtype, use_safetensors=True)
        else:
            from transformers import ViTModel

            model = ViTModel.from_pretrained(files.folder, add_pooling_layer=False, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"cannot load the VFM from {files.folder}: {clipped(str(exc).splitlines()[0], 200)}"
        ) from None
    model = model.to(device).eval().requires_grad_(False)
    patch = model.config.patch_size
    patch = int(patch if isinstance(patch, int) else patch[0])
    return VisionFoundationModel(model, family, patch, files.identity)
