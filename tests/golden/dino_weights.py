"""Reproducible random weights for a DINO ViT with patch 8 and ViT-B's width (2 blocks, not
12: the parity is in the architecture, not its depth), in DINO's own layout (what
``dino/vision_transformer.py``'s ``VisionTransformer`` loads) and converted to a
transformers ``ViTModel`` (what ``facebook/dino-vitb8`` is on the hub and openseg-r
loads). Drawn from numpy as ``weights.py`` draws CLIP's, so both sides see the same model
without any download or torch's random number generator. The positional table is a smooth
field, as a trained one is, so its resize to other grids shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

try:
    from golden.weights import _normal, _smooth_positions
except ModuleNotFoundError:  # run from tests/golden, as make_proxyclip_golden.py runs
    from weights import _normal, _smooth_positions

DINO_SEED = 20240805
WIDTH, DEPTH, HEADS, PATCH, TRAINED_GRID = 768, 2, 12, 8, 28  # trained at 224 pixels: 28x28 patches


def dino_state_dict(seed: int = DINO_SEED) -> dict[str, torch.Tensor]:
    """DINO's layout: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.*``, ``norm``."""
    w = WIDTH
    arrays = {
        "cls_token": _normal(seed, "cls_token", (1, 1, w), 0.02),
        "pos_embed": _smooth_positions(seed, "pos_embed", TRAINED_GRID, w, 0.5)[None],
        "patch_embed.proj.weight": _normal(
            seed, "patch_embed.proj.weight", (w, 3, PATCH, PATCH), (3 * PATCH**2) ** -0.5
        ),
        "patch_embed.proj.bias": _normal(seed, "patch_embed.proj.bias", (w,), 0.02),
        "norm.weight": _normal(seed, "norm.weight", (w,), 0.05, 1.0),
        "norm.bias": _normal(seed, "norm.bias", (w,), 0.02),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}."
        for name, shape, std, mean in (
            ("norm1.weight", (w,), 0.05, 1.0),
            ("norm1.bias", (w,), 0.02, 0.0),
            ("attn.qkv.weight", (3 * w, w), w**-0.5, 0.0),
            ("attn.qkv.bias", (3 * w,), 0.02, 0.0),
            ("attn.proj.weight", (w, w), (2 * DEPTH * w) ** -0.5, 0.0),
            ("attn.proj.bias", (w,), 0.02, 0.0),
            ("norm2.weight", (w,), 0.05, 1.0),
            ("norm2.bias", (w,), 0.02, 0.0),
            ("mlp.fc1.weight", (4 * w, w), w**-0.5, 0.0),
            ("mlp.fc1.bias", (4 * w,), 0.02, 0.0),
            ("mlp.fc2.weight", (w, 4 * w), (8 * DEPTH * w) ** -0.5, 0.0),
            ("mlp.fc2.bias", (w,), 0.02, 0.0),
        ):
            arrays[p + name] = _normal(seed, p + name, shape, std, mean)
    return {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in arrays.items()}


def transformers_state_dict(dino: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under transformers' ``ViTModel`` names (qkv split into q, k, v)."""
    out = {
        "embeddings.cls_token": dino["cls_token"],
        "embeddings.position_embeddings": dino["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": dino["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": dino["patch_embed.proj.bias"],
        "layernorm.weight": dino["norm.weight"],
        "layernorm.bias": dino["norm.bias"],
    }
    for i in range(DEPTH):
        d, t = f"blocks.{i}.", f"layers.{i}."
        for part, chunk_w, chunk_b in zip(
            ("q_proj", "k_proj", "v_proj"),
            dino[d + "attn.qkv.weight"].chunk(3),
            dino[d + "attn.qkv.bias"].chunk(3),
        ):
            out[f"{t}attention.{part}.weight"], out[f"{t}attention.{part}.bias"] = chunk_w, chunk_b
        renames = {
            "attn.proj": "attention.o_proj",
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
        }
        for old, new in renames.items():
            for suffix in ("weight", "bias"):
                out[f"{t}{new}.{suffix}"] = dino[f"{d}{old}.{suffix}"]
    return {name: tensor.contiguous() for name, tensor in out.items()}


def save_transformers_dino(folder: Path, seed: int = DINO_SEED) -> Path:
    """A transformers folder (config.json + safetensors) holding these weights."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=4 * WIDTH,
        image_size=TRAINED_GRID * PATCH,
        patch_size=PATCH,
        qkv_bias=True,
        layer_norm_eps=1e-6,  # DINO's
        hidden_act="gelu",
    )
    model = ViTModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(transformers_state_dict(dino_state_dict(seed)), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval().save_pretrained(folder)
    return folder
