"""Tiny random vision foundation models saved as transformers folders, as a user's
downloaded ``facebook/dino-vitb8`` or ``facebook/dinov2-with-registers-base`` would be."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_dino(folder: Path, patch_size: int = 8, seed: int = 0) -> Path:
    """A 2-layer ViT (hidden 32, 4 heads) trained at 64 pixels: 8x8 patches of ``patch_size``."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=8 * patch_size,
        patch_size=patch_size,
        qkv_bias=True,
        layer_norm_eps=1e-6,
    )
    model = ViTModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():  # a smooth positional table, as trained ones are: the resize then matters
        grid = torch.linspace(0, 3.14, 8)
        waves = torch.sin(grid[:, None, None] + grid[None, :, None] * torch.arange(1, 33)[None, None, :] / 8)
        model.embeddings.position_embeddings[0, 1:] = waves.reshape(64, 32)
    model.save_pretrained(folder)
    return folder


def save_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A 2-layer DINOv2 with 4 registers (hidden 32), patch 14, trained at 112 pixels."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=112,
        patch_size=14,
        num_register_tokens=4,
    )
    Dinov2WithRegistersModel(config).eval().save_pretrained(folder)
    return folder
