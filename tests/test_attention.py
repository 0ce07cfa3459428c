"""Each last-block variant against its formula written out plainly, head by head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from openseg_r.segmenters.dense_clip.attention import (
    ATTENTION_VARIANTS,
    attention_bias,
    cached_gaussian_bias,
    gaussian_bias,
    last_block,
)
from openseg_r.segmenters.dense_clip.dense import DenseCLIPEncoder


def plain_gaussian(grid_h, grid_w, sigma):
    n = grid_h * grid_w
    bias = torch.zeros(n + 1, n + 1)
    for p in range(n):
        for q in range(n):
            dy = p // grid_w - q // grid_w
            dx = p % grid_w - q % grid_w
            bias[p + 1, q + 1] = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
    return bias


def plain_last_block(block, x, variant, grid, sigma=5.0):
    """Straightforward per-head loops of the formulas in docs/design.md §2."""
    attn = block.attn
    width = x.shape[-1]
    heads = attn.num_heads
    d = width // heads
    y = block.ln_1(x)
    w_q, w_k, w_v = attn.in_proj_weight.split(width)
    b_q, b_k, b_v = attn.in_proj_bias.split(width)
    q_all, k_all, v_all = y @ w_q.T + b_q, y @ w_k.T + b_k, y @ w_v.T + b_v
    outputs = []
    for h in range(heads):
        q, k, v = (t[..., h * d : (h + 1) * d] for t in (q_all, k_all, v_all))
        if variant == "maskclip":
            outputs.append(v)
            continue
        if variant == "clearclip":
            weights = torch.softmax(q @ q.transpose(-1, -2) / math.sqrt(d), dim=-1)
        elif variant == "sclip":
            weights = torch.softmax(q @ q.transpose(-1, -2) / math.sqrt(d), dim=-1) + torch.softmax(
                k @ k.transpose(-1, -2) / math.sqrt(d), dim=-1
            )
        elif variant == "naclip":
            weights = torch.softmax(k @ k.transpose(-1, -2) / math.sqrt(d) + plain_gaussian(*grid, sigma), dim=-1)
        outputs.append(weights @ v)
    out = torch.cat(outputs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
    if variant in ("naclip", "clearclip"):
        return out
    x = x + out
    return x + block.mlp(block.ln_2(x))


def test_gaussian_bias_matches_plain_formula():
    assert torch.allclose(gaussian_bias(3, 4, 5.0), plain_gaussian(3, 4, 5.0), atol=1e-6)
    bias = gaussian_bias(2, 2, 1.0)
    assert bias[0].abs().sum() == 0 and bias[:, 0].abs().sum() == 0  # CLS gets no bias
    assert torch.allclose(torch.diagonal(bias)[1:], torch.ones(4))  # peak 1


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_dense_features_match_plain_computation(tiny_clip, variant):
    visual = tiny_clip.model.visual
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 48, 80)  # a non-square grid (3 x 5) exercises pos-embed interpolation
    encoder = DenseCLIPEncoder(tiny_clip.model, variant)
    got = encoder(pixels)

    with torch.no_grad():
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        pos = visual.positional_embedding
        side = int(math.sqrt(pos.shape[0] - 1))
        grid_pos = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(  # NACLIP's interpolate_pos_encoding: scale (g + 0.1) / n, not g / n
            grid_pos,
            mode="bicubic",
            scale_factor=(3.1 / side, 5.1 / side),
            align_corners=False,
            recompute_scale_factor=False,
        )
        pos = torch.cat([pos[:1], grid_pos.permute(0, 2, 3, 1).reshape(15, -1)])
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + pos
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        x = last(x) if variant == "vanilla" else plain_last_block(last, x, variant, (3, 5))
        expected = F.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1).reshape(2, 3, 5, -1)
    assert got.shape == (2, 3, 5, visual.proj.shape[1])
    assert torch.allclose(got, expected, atol=1e-5)


def test_vanilla_at_native_size_matches_open_clip_tokens(tiny_clip):
    visual = tiny_clip.model.visual
    pixels = torch.randn(1, 3, 64, 64)
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(pixels)
    finally:
        visual.output_tokens = False
    expected = F.normalize(tokens @ visual.proj, dim=-1).reshape(1, 4, 4, -1)
    assert torch.allclose(DenseCLIPEncoder(tiny_clip.model, "vanilla")(pixels), expected, atol=1e-5)


def test_variants_differ(tiny_clip):
    pixels = torch.randn(1, 3, 64, 64)
    outs = {v: DenseCLIPEncoder(tiny_clip.model, v)(pixels) for v in ATTENTION_VARIANTS}
    for a in ATTENTION_VARIANTS:
        for b in ATTENTION_VARIANTS:
            if a < b:
                assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


def test_unknown_variant_is_a_clear_error(tiny_clip):
    from openseg_r.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown attention variant"):
        DenseCLIPEncoder(tiny_clip.model, "magic")


def clearclip_published(visual, pixels):
    """ClearCLIP as its authors' code computes it (mc-lan/ClearCLIP ``open_clip/transformer.py``,
    ``VisionTransformer.forward`` with ``ignore_residual=True`` and ``custom_attn`` with
    ``model_type='ClearCLIP'``), in its (tokens, batch, width) layout: the last block's output
    is ``out_proj(softmax(scale·q·qᵀ)·v)`` of ``ln_1(x)`` alone, no residual and no FFN, then
    ``ln_post`` and ``proj`` on every token."""
    batch = pixels.shape[0]
    x = visual.conv1(pixels).reshape(batch, visual.conv1.out_channels, -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.expand(batch, 1, -1), x], dim=1)
    pos = visual.positional_embedding
    side = int(math.sqrt(pos.shape[0] - 1))
    grid = (pixels.shape[-2] // 16 + 0.1, pixels.shape[-1] // 16 + 0.1)  # its interpolate_pos_encoding
    patch_pos = F.interpolate(
        pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2),
        scale_factor=(grid[0] / side, grid[1] / side),
        mode="bicubic",
    )
    x = x + torch.cat([pos[:1], patch_pos.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])])
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    x = x.permute(1, 0, 2)  # NLD -> LND
    attn = visual.transformer.resblocks[-1].attn
    y = visual.transformer.resblocks[-1].ln_1(x)
    num_heads = attn.num_heads
    num_tokens, bsz, embed_dim = y.size()
    head_dim = embed_dim // num_heads
    scale = head_dim**-0.5
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    attn_weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
    out = torch.bmm(attn_weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    out = attn.out_proj(out).permute(1, 0, 2)  # LND -> NLD
    tokens = visual.ln_post(out)[:, 1:] @ visual.proj
    return F.normalize(tokens, dim=-1)


def test_clearclip_matches_its_published_code(tiny_clip):
    visual = tiny_clip.model.visual
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        expected = clearclip_published(visual, pixels).reshape(2, 3, 5, -1)
    assert torch.allclose(DenseCLIPEncoder(tiny_clip.model, "clearclip")(pixels), expected, atol=1e-5)


@pytest.mark.parametrize("variant", ["clearclip", "naclip"])
def test_reduced_variants_have_no_residual_and_no_ffn(tiny_clip, variant):
    """The last block's output does not depend on its FFN, nor (for a fixed ``ln_1(x)``) on x."""
    block = tiny_clip.model.visual.transformer.resblocks[-1]
    torch.manual_seed(3)
    x = torch.randn(2, 1 + 6, block.attn.embed_dim)
    with torch.no_grad():
        out = last_block(block, x, variant, (2, 3))
        shifted = x + 7.0  # layer norm removes a constant shift: same ln_1(x), different residual
        assert torch.allclose(last_block(block, shifted, variant, (2, 3)), out, atol=1e-4)
        saved = [p.clone() for p in block.mlp.parameters()]
        try:
            for p in block.mlp.parameters():
                p.mul_(3.0).add_(1.0)
            assert torch.equal(last_block(block, x, variant, (2, 3)), out)
        finally:
            for p, value in zip(block.mlp.parameters(), saved):
                p.copy_(value)
        if variant == "clearclip":  # q-q attention: the keys' weights play no part
            w_k = block.attn.in_proj_weight[block.attn.embed_dim : 2 * block.attn.embed_dim]
            saved_k = w_k.clone()
            try:
                w_k.mul_(-2.0)
                assert torch.equal(last_block(block, x, variant, (2, 3)), out)
            finally:
                w_k.copy_(saved_k)


def explicit_softmax_last_block(block, x, variant, grid, sigma=5.0):
    """The batched softmax formulas of the module docstring, written out with the weights
    materialised (the implementation before the fused ``scaled_dot_product_attention``)."""
    attn = block.attn
    batch, tokens, width = x.shape
    heads = attn.num_heads
    scale = (width // heads) ** -0.5
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (t.reshape(batch, tokens, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    if variant == "maskclip":
        mixed = v
    elif variant == "clearclip":
        mixed = torch.softmax(scale * q @ q.transpose(-2, -1), dim=-1) @ v
    elif variant == "sclip":
        weights = torch.softmax(scale * q @ q.transpose(-2, -1), dim=-1)
        mixed = (weights + torch.softmax(scale * k @ k.transpose(-2, -1), dim=-1)) @ v
    else:
        mixed = torch.softmax(scale * k @ k.transpose(-2, -1) + gaussian_bias(*grid, sigma), dim=-1) @ v
    out = block.ls_1(attn.out_proj(mixed.transpose(1, 2).reshape(batch, tokens, width)))
    if variant in ("naclip", "clearclip"):
        return out
    x = x + out
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@pytest.mark.parametrize("variant", [v for v in ATTENTION_VARIANTS if v != "vanilla"])
def test_fused_attention_equals_explicit_softmax(variant):
    """Fused SDPA changes how the softmax is computed, never what: float32, 1e-5, on a
    block of ViT-B's head size (64) with layer scale, over a non-square grid."""
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(4)
    block = ResidualAttentionBlock(256, 4, ls_init_value=0.5).eval()
    grid = (7, 9)
    x = torch.randn(3, 1 + grid[0] * grid[1], 256)
    with torch.no_grad():
        expected = explicit_softmax_last_block(block, x, variant, grid, sigma=2.5)
        got = last_block(block, x, variant, grid, sigma=2.5)
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
        if variant == "naclip":  # a precomputed bias (what a compiled encoder passes) is the same bias
            bias = attention_bias(variant, grid, 2.5, x.device, x.dtype)
            assert torch.equal(last_block(block, x, variant, grid, 2.5, bias=bias), got)
            wrong = attention_bias(variant, grid, 1.0, x.device, x.dtype)
            assert not torch.allclose(last_block(block, x, variant, grid, 2.5, bias=wrong), got, atol=1e-4)


def test_gaussian_bias_is_cached_per_grid_sigma_device_and_dtype():
    first = attention_bias("naclip", (3, 4), 5.0, "cpu", torch.float32)
    assert attention_bias("naclip", (3, 4), 5.0, torch.device("cpu"), torch.float32) is first
    assert torch.equal(first, gaussian_bias(3, 4, 5.0))
    assert attention_bias("naclip", (4, 3), 5.0, "cpu", torch.float32).shape == first.shape
    assert not torch.equal(attention_bias("naclip", (4, 3), 5.0, "cpu", torch.float32), first)
    assert attention_bias("naclip", (3, 4), 2.0, "cpu", torch.float32) is not first
    half = attention_bias("naclip", (3, 4), 5.0, "cpu", torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half is not first
    others = [v for v in ATTENTION_VARIANTS if v != "naclip"]
    assert all(attention_bias(v, (3, 4), 5.0, "cpu", torch.float32) is None for v in others)
    with torch.inference_mode():  # built under inference mode, still usable outside it
        cached_gaussian_bias.cache_clear()
        inside = attention_bias("naclip", (2, 2), 5.0, "cpu", torch.float32)
    assert not inside.is_inference()
