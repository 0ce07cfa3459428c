"""ProxyCLIP's proxy attention: CLIP's last block with its attention weights taken from a
vision foundation model's patch features (the reference's ``custom_attn``).

With ``f`` the VFM's patch features of one window (C, I, J):

1. ``f`` is L2-normalised per patch and ``S = fᵀf`` (IJ x IJ cosine similarities);
2. ``S' = (S - mean(S) * beta) * gamma``, the mean over the whole window's matrix;
   negative entries become -inf;
3. ``A = softmax(S', dim=-1)``, the same weights for every head;
4. CLIP's value vectors of the patch tokens (``ln_1`` then the block's in-projection; no
   CLS) are resized bilinearly from CLIP's grid to the VFM's (I, J);
5. the output is ``out_proj(A · v)``: no residual and no MLP; then ``ln_post`` and ``proj``
   (in :mod:`openseg_r.segmenters.proxyclip.encoder`).

Two departures, both where the reference has no defined answer:

- the mean of step 2 is per window; the reference takes it over its whole batch, which is
  always one window (its sliding loop runs windows one at a time);
- a row whose entries are all masked (a window so flat that every similarity is below
  ``beta`` times the mean, e.g. a uniform grey window, where ``S`` is all ones and beta > 1)
  would be all NaN after the softmax; here such a patch attends to itself alone.

Because every head shares ``A``, ``A · v`` runs once over all heads' values together (one
matmul) instead of the reference's per-head copy of ``A``: the same sums, without
``heads`` copies of an IJ x IJ matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openseg_r.segmenters.dense_clip.numerics import resize_bilinear, softmax


def proxy_weights(vfm_features: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """``(B, C, I, J)`` VFM features -> ``(B, IJ, IJ)`` attention weights, in float32."""
    flat = F.normalize(vfm_features.flatten(2).float(), dim=1)  # (B, C, IJ)
    similarity = flat.transpose(1, 2) @ flat  # (B, IJ, IJ)
    mean = similarity.mean(dim=(1, 2), keepdim=True)
    logits = (similarity - mean * beta) * gamma
    logits = logits.masked_fill(logits < 0, float("-inf"))
    blank = torch.isinf(logits).all(dim=-1)  # rows with nothing left: attend to oneself
    if bool(blank.any()):
        eye = torch.eye(logits.shape[-1], dtype=torch.bool, device=logits.device)
        logits = torch.where(blank.unsqueeze(-1) & eye, torch.zeros_like(logits), logits)
    return softmax(logits, dim=-1)


def proxy_block(
    block, x: torch.Tensor, weights: torch.Tensor, clip_grid: tuple[int, int], vfm_grid: tuple[int, int]
) -> torch.Tensor:
    """CLIP's last residual block on tokens ``x`` (B, 1 + gh*gw, D), batch first, with the
    proxy ``weights`` (B, IJ, IJ): ``out_proj(weights · v)`` on the VFM's grid (B, IJ, D)."""
    attn = block.attn
    width = x.shape[-1]
    y = block.ln_1(x)
    v = F.linear(y[:, 1:], attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])  # patch tokens only
    v = v.reshape(x.shape[0], clip_grid[0], clip_grid[1], width).permute(0, 3, 1, 2)
    v = resize_bilinear(v.float(), vfm_grid).flatten(2).transpose(1, 2)  # (B, IJ, D)
    mixed = weights @ v
    return attn.out_proj(mixed.to(x.dtype))
