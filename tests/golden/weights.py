"""Reproducible random weights for open_clip's ``ViT-B-16-quickgelu`` (OpenAI layout).

Used by ``make_naclip_golden.py`` (to run the NACLIP reference code) and by
``tests/test_parity.py`` (to run openseg-r), so both see exactly the same model without
any download and without depending on torch's random number generator: every tensor is
drawn from ``numpy.random.default_rng([seed, crc32(name)])`` with open_clip-like scales,
and rounded to float16 values (kept as float32), because the reference's ``build_model``
casts the linear and convolution weights to float16 before loading them.

The patch positional embedding is a smooth random field (low-frequency cosines, std ~0.5)
rather than white noise, as trained CLIP's is: that makes the features depend visibly on
how it is resized to other grids.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

MODEL_NAME = "ViT-B-16-quickgelu"
SEED = 20240611

VISION_WIDTH, VISION_LAYERS, PATCH, GRID = 768, 12, 16, 14
TEXT_WIDTH, TEXT_LAYERS, CONTEXT, VOCAB = 512, 12, 77, 49408
EMBED_DIM = 512


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _normal(seed: int, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    return (mean + std * _rng(seed, name).standard_normal(shape, dtype=np.float32)).astype(np.float32)


def _smooth_positions(seed: int, name: str, grid: int, width: int, std: float) -> np.ndarray:
    """(1 + grid², width): a random CLS row and, per channel, a sum of 3 plane waves over the grid."""
    rng = _rng(seed, name)
    cls = rng.standard_normal((1, width), dtype=np.float32) * width**-0.5
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    coords = np.stack([ys.reshape(-1), xs.reshape(-1)], axis=1).astype(np.float64) / grid  # (grid², 2)
    field = np.zeros((grid * grid, width))
    for _ in range(3):
        freq = rng.uniform(-1.5, 1.5, size=(2, width))  # cycles per image side
        phase = rng.uniform(0, 2 * np.pi, size=width)
        field += np.cos(2 * np.pi * coords @ freq + phase)
    field *= std / np.sqrt(3 / 2)
    return np.concatenate([cls, field.astype(np.float32)], axis=0)


def _blocks(seed: int, prefix: str, width: int, layers: int, out: dict[str, np.ndarray]) -> None:
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        shapes = {
            "ln_1.weight": ((width,), 0.05, 1.0),
            "ln_1.bias": ((width,), 0.02, 0.0),
            "attn.in_proj_weight": ((3 * width, width), attn_std, 0.0),
            "attn.in_proj_bias": ((3 * width,), 0.02, 0.0),
            "attn.out_proj.weight": ((width, width), proj_std, 0.0),
            "attn.out_proj.bias": ((width,), 0.01, 0.0),
            "ln_2.weight": ((width,), 0.05, 1.0),
            "ln_2.bias": ((width,), 0.02, 0.0),
            "mlp.c_fc.weight": ((4 * width, width), fc_std, 0.0),
            "mlp.c_fc.bias": ((4 * width,), 0.02, 0.0),
            "mlp.c_proj.weight": ((width, 4 * width), proj_std, 0.0),
            "mlp.c_proj.bias": ((width,), 0.01, 0.0),
        }
        for name, (shape, std, mean) in shapes.items():
            out[p + name] = _normal(seed, p + name, shape, std, mean)


def state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """The full OpenAI-layout state_dict (float32 tensors holding float16 values)."""
    arrays: dict[str, np.ndarray] = {}
    v = VISION_WIDTH
    conv_std = (3 * PATCH * PATCH) ** -0.5
    arrays["visual.conv1.weight"] = _normal(seed, "visual.conv1.weight", (v, 3, PATCH, PATCH), conv_std)
    arrays["visual.class_embedding"] = _normal(seed, "visual.class_embedding", (v,), v**-0.5)
    arrays["visual.positional_embedding"] = _smooth_positions(seed, "visual.positional_embedding", GRID, v, 0.5)
    arrays["visual.ln_pre.weight"] = _normal(seed, "visual.ln_pre.weight", (v,), 0.05, 1.0)
    arrays["visual.ln_pre.bias"] = _normal(seed, "visual.ln_pre.bias", (v,), 0.02)
    _blocks(seed, "visual.transformer", v, VISION_LAYERS, arrays)
    arrays["visual.ln_post.weight"] = _normal(seed, "visual.ln_post.weight", (v,), 0.05, 1.0)
    arrays["visual.ln_post.bias"] = _normal(seed, "visual.ln_post.bias", (v,), 0.02)
    arrays["visual.proj"] = _normal(seed, "visual.proj", (v, EMBED_DIM), v**-0.5)

    t = TEXT_WIDTH
    arrays["token_embedding.weight"] = _normal(seed, "token_embedding.weight", (VOCAB, t), 0.02)
    arrays["positional_embedding"] = _normal(seed, "positional_embedding", (CONTEXT, t), 0.01)
    _blocks(seed, "transformer", t, TEXT_LAYERS, arrays)
    arrays["ln_final.weight"] = _normal(seed, "ln_final.weight", (t,), 0.05, 1.0)
    arrays["ln_final.bias"] = _normal(seed, "ln_final.bias", (t,), 0.02)
    arrays["text_projection"] = _normal(seed, "text_projection", (t, EMBED_DIM), t**-0.5)
    arrays["logit_scale"] = np.array(np.log(1 / 0.07), dtype=np.float32)
    return {name: torch.from_numpy(a.astype(np.float16).astype(np.float32)) for name, a in arrays.items()}


def open_clip_model(seed: int = SEED) -> torch.nn.Module:
    """open_clip's ``ViT-B-16-quickgelu`` with these weights, in eval mode, float32, CPU."""
    import open_clip

    model = open_clip.create_model(MODEL_NAME, pretrained=None, device="cpu")
    model.load_state_dict(state_dict(seed))
    return model.eval().requires_grad_(False)
