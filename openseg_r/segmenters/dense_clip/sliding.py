"""Sliding-window geometry and exact bilinear resampling in row chunks."""

from __future__ import annotations

import torch

from openseg_r.segmenters.dense_clip.numerics import linear_weights, resize_bilinear


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of each window, mmsegmentation's ``slide_inference`` convention.

    Every window has the same size (``min(crop, side)`` per side), so all windows
    of an image can go through the vision tower as one batch.
    """
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * stride + crop, height)
            x2 = min(w_idx * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def resize_shape(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """Keep the aspect ratio; short side to ``short_side``, long side at most ``max_long_side``."""
    long_edge, short_edge = max(height, width), min(height, width)
    scale = min(max_long_side / long_edge, short_side / short_edge)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


class RowResampler:
    """Bilinear resize of a (K, h, w) map to (K, H, W), produced a band of rows at a time.

    Computes :func:`~openseg_r.segmenters.dense_clip.numerics.resize_bilinear` (``F.interpolate``'s
    bilinear resize, ``align_corners=False``, to an ulp, the same at any thread count) while
    holding only ``K x rows x W`` values, so large vocabularies on large images fit in memory.
    Every band equals the same rows of the whole map.
    """

    def __init__(self, source: torch.Tensor, out_height: int, out_width: int) -> None:
        self.source = source
        self.out_height, self.out_width = out_height, out_width
        self.rows = linear_weights(out_height, source.shape[1], source.device)
        self.cols = linear_weights(out_width, source.shape[2], source.device)

    def band(self, start: int, stop: int, channels: slice | None = None) -> torch.Tensor:
        """Rows ``[start, stop)`` of the resized map, of all channels or of ``channels``."""
        source = self.source if channels is None else self.source[channels]
        if start == 0 and stop == self.out_height:
            return resize_bilinear(source, (self.out_height, self.out_width))
        low, high, weight = (t[start:stop] for t in self.rows)
        weight = weight.to(self.source.dtype)[None, :, None]
        return self._columns(source[:, low]) * (1 - weight) + self._columns(source[:, high]) * weight

    def _columns(self, rows: torch.Tensor) -> torch.Tensor:
        low, high, weight = self.cols
        weight = weight.to(self.source.dtype)[None, None, :]
        return rows[:, :, low] * (1 - weight) + rows[:, :, high] * weight
