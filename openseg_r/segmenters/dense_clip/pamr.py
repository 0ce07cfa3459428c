"""PAMR, pixel-adaptive mask refinement, as NACLIP applies it (docs/design.md §2.2).

NACLIP (``naclip.py`` ``predict``) resizes the window-averaged logits bilinearly to the
image size, resizes the normalised inference-size image bilinearly to the same size, and
refines the logits with PAMR (Araslanov & Roth, CVPR 2020; 10 steps, dilations 8 and 16)
before the softmax. With ``I`` that guide image (3 channels), and for each dilation ``d``
the 8 neighbours ``n = d·(dy, dx)``, ``dy, dx ∈ {-1, 0, 1}``, not both 0 (borders are
replicated):

- ``σ_c(p)``: the standard deviation (unbiased) of ``I_c`` over the 3x3 dilated
  neighbourhoods of ``p`` for every dilation (centre included once per dilation);
- ``w_n(p) = softmax_n mean_c(-|I_c(p) - I_c(p + n)| / (1e-8 + 0.1·σ_c(p)))``;
- then ``steps`` times, every logit channel alone: ``M(p) ← Σ_n w_n(p)·M(p + n)``.

Memory. Done naively (the reference stacks all 16 shifted copies of every channel), ADE-847
with 3 attribute slots (2,541 channels) on a 512x683 image needs ~57 GB. Here the
refinement is linear and per channel given ``w``, and local: after ``t`` steps a pixel
depends only on inputs within ``t·max(d)`` rows. So it runs on tiles of (a chunk of
channels, a block of rows): a block of output rows ``[s, e)`` is computed from rows
``[s - halo, e + halo)``, ``halo = steps·max(d)`` (160 rows for NACLIP's settings), whose
edge rows go wrong by at most ``max(d)`` rows per step and are dropped; the result equals
the whole-image refinement to float rounding. :class:`BandRefiner` keeps one refined block
(all channels, so the caller can score it) and its neighbour weights within
``BLOCK_ELEMENTS`` values, and refines it channel chunk by channel chunk within
``TILE_ELEMENTS`` values: PAMR adds at most ~``4·(BLOCK_ELEMENTS + TILE_ELEMENTS)`` bytes.

Measured for that ADE-847 case (CPU, fp32, peak RSS of a fresh process refining one
interior block, ``MALLOC_MMAP_THRESHOLD_=65536`` so that RSS follows live memory): the
inference-size logits that ``dense_logits`` already holds are 1.53 GB; PAMR adds 0.60 GB
(0.77 GB with glibc's default thresholds, which keep some freed memory), where refining
the whole image at once would add ~57 GB and even its refined full-size logits alone would
take 3.55 GB. The price is recomputing the halos: for that case blocks of 71 rows refine
2,423 rows for 512, 4.7x the arithmetic of one whole-image pass (one block took 38 s on 2
CPU cores). A larger ``BLOCK_ELEMENTS`` trades memory for less of it (256M values: 2.7x);
when the whole image fits one block (VOC-21 or PASCAL-Context-60 at these sizes) nothing is
recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from openseg_r.segmenters.dense_clip.numerics import resize_bilinear, softmax
from openseg_r.segmenters.dense_clip.sliding import RowResampler

BLOCK_ELEMENTS = 128_000_000  # refined values (channels x rows x width) plus neighbour weights per row block
TILE_ELEMENTS = 24_000_000  # working values of one (channel chunk, row block) tile
TILE_COPIES = 5  # tensors of a tile's size alive at once while it is refined

RowSource = Callable[[int, int], torch.Tensor]  # (start, stop) -> (C, stop - start, W) float32
ChannelRowSource = Callable[[int, int, int, int], torch.Tensor]  # (c0, c1, start, stop) -> (c1 - c0, rows, W)


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The (dy, dx) of every neighbour, in the reference's kernel order."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


class BandRefiner:
    """PAMR-refined full-size logits, served a band of rows at a time (``band(start, stop)``,
    the :class:`~openseg_r.segmenters.dense_clip.sliding.RowResampler` interface).

    ``logit_rows(c0, c1, a, b)`` gives channels ``[c0, c1)`` of the unrefined full-size
    logits for rows ``[a, b)``; ``guide_rows(a, b)`` the guide image's rows. Everything runs
    on the device of the guide (the segmenter's), in float32. Rows are refined
    in consecutive blocks ``[0, R), [R, 2R), ...`` of ``R = block_rows`` rows (from the
    ``block_elements`` budget unless given) and only the current block is kept, so bands are
    best asked for in order; a band that straddles two blocks is put together from both.
    """

    def __init__(
        self,
        logit_rows: ChannelRowSource,
        guide_rows: RowSource,
        num_channels: int,
        height: int,
        width: int,
        steps: int = 10,
        dilations: Sequence[int] = (8, 16),
        *,
        block_elements: int | None = None,
        tile_elements: int | None = None,
        block_rows: int | None = None,
    ) -> None:
        if steps < 0 or not dilations or min(dilations) < 1:
            raise ValueError("PAMR needs steps >= 0 and positive dilations")
        self.logit_rows, self.guide_rows = logit_rows, guide_rows
        self.num_channels, self.height, self.width = num_channels, height, width
        self.steps, self.dilations = steps, tuple(int(d) for d in dilations)
        self.reach = max(self.dilations)
        self.halo = steps * self.reach
        self.offsets = neighbour_offsets(self.dilations)
        self.tile_elements = TILE_ELEMENTS if tile_elements is None else tile_elements
        if block_rows is None:
            block_rows = self.rows_for_budget(BLOCK_ELEMENTS if block_elements is None else block_elements)
        self.block_rows = max(1, block_rows)
        self._block: tuple[int, int, torch.Tensor] | None = None
        self.blocks_computed = 0
        self.rows_computed = 0  # rows refined, halos included: the arithmetic actually spent

    @classmethod
    def from_inference(
        cls,
        logits: torch.Tensor,
        guide: torch.Tensor,
        out_height: int,
        out_width: int,
        steps: int = 10,
        dilations: Sequence[int] = (8, 16),
        **options,
    ) -> "BandRefiner":
        """NACLIP's inputs: inference-size logits (K, h, w) and normalised image (3, h, w), both
        resized bilinearly (``align_corners=False``) to ``out_height x out_width``: the logits
        band by band (:class:`RowResampler`), the guide at once, both with
        :func:`~openseg_r.segmenters.dense_clip.numerics.resize_bilinear` (the reference's ``F.interpolate``
        to an ulp, and the same at any thread count, which ``F.interpolate`` on 3 channels is
        not). Where the image is perfectly flat, ``σ`` is rounding noise and the weights
        divide it by ~1e-8, so there an ulp in the guide can move refined logits by ~1e-3;
        ``tests/test_parity.py`` holds the whole refinement to the reference at 1e-4. (The
        guide holds 3 x H x W values, as much as one of ``segment``'s output arrays.)"""
        resampler = RowResampler(logits.float(), out_height, out_width)
        full_guide = resize_bilinear(_image(guide).float(), (out_height, out_width))
        return cls(
            lambda c0, c1, a, b: resampler.band(a, b, channels=slice(c0, c1)),
            lambda a, b: full_guide[:, a:b],
            logits.shape[0],
            out_height,
            out_width,
            steps,
            dilations,
            **options,
        )

    def rows_for_budget(self, elements: int) -> int:
        """Output rows per block so the block (all channels) and its weights fit ``elements``."""
        per_row = (self.num_channels + len(self.offsets)) * self.width
        spare = elements - len(self.offsets) * 2 * self.halo * self.width
        return max(1, spare // per_row)

    def band(self, start: int, stop: int) -> torch.Tensor:
        """Refined logits (K, stop - start, W) of rows ``[start, stop)``."""
        if not 0 <= start < stop <= self.height:
            raise ValueError(f"rows [{start}, {stop}) are outside the image of {self.height} rows")
        parts = []
        while start < stop:
            first, last, values = self._block_with(start)
            end = min(stop, last)
            part = values[:, start - first : end - first]
            del values  # hold no reference to a block that is about to be replaced ...
            parts.append(part if end == stop else part.clone())  # ... nor a view of it
            start = end
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _block_with(self, row: int) -> tuple[int, int, torch.Tensor]:
        """The block holding ``row``, refined now unless it is the current one."""
        block = self._block
        if block is None or not block[0] <= row < block[1]:
            self._block = None  # free the old block before refining the next
            first = row // self.block_rows * self.block_rows
            last = min(self.height, first + self.block_rows)
            block = self._block = (first, last, self.refine_rows(first, last))
        return block

    def refine_rows(self, start: int, stop: int) -> torch.Tensor:
        """Refined logits (K, stop - start, W) of rows ``[start, stop)``, computed from the rows
        ``[start - halo, stop + halo)`` channel chunk by channel chunk."""
        first, last = max(0, start - self.halo), min(self.height, stop + self.halo)
        weights = self.weights(first, last)
        padded_size = (last - first + 2 * self.reach) * (self.width + 2 * self.reach)
        chunk = max(1, self.tile_elements // (TILE_COPIES * padded_size))
        out = torch.empty((self.num_channels, stop - start, self.width), device=weights.device, dtype=torch.float32)
        for c0 in range(0, self.num_channels, chunk):
            c1 = min(self.num_channels, c0 + chunk)
            mask = self.logit_rows(c0, c1, first, last).float()
            out[c0:c1] = propagate(mask, weights, self.offsets, self.steps)[:, start - first : stop - first]
        self.blocks_computed += 1
        self.rows_computed += last - first
        return out

    def weights(self, start: int, stop: int) -> torch.Tensor:
        """The neighbour weights (P, stop - start, W) of rows ``[start, stop)``, in sub-bands
        of rows so the temporaries stay within the tile budget."""
        per_row = 64 * (self.width + 2 * self.reach)  # temporaries per row: 54 neighbourhood values and more
        rows = max(1, self.tile_elements // per_row)
        parts = []
        for a in range(start, stop, rows):
            b = min(stop, a + rows)
            lo, hi = max(0, a - self.reach), min(self.height, b + self.reach)
            guide = self.guide_rows(lo, hi).float()
            top, bottom = lo - (a - self.reach), (b + self.reach) - hi  # replicate only at the image border
            guide = F.pad(guide[None], (self.reach, self.reach, top, bottom), mode="replicate")[0]
            parts.append(neighbour_weights(guide, self.offsets, self.dilations, self.reach))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def neighbour_weights(
    guide: torch.Tensor, offsets: Sequence[tuple[int, int]], dilations: Sequence[int], reach: int
) -> torch.Tensor:
    """Softmax weights (P, H, W) of the neighbours from a guide (3, H + 2r, W + 2r) padded by
    ``reach`` = r (replicate padding where the padding is the image border)."""
    height, width = guide.shape[1] - 2 * reach, guide.shape[2] - 2 * reach

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return guide[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width]

    neighbourhood = [shifted(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    std = torch.stack(neighbourhood, dim=1).std(dim=1)  # (3, H, W), unbiased, as the reference
    del neighbourhood
    centre = shifted(0, 0)
    scale = 1e-8 + 0.1 * std
    logits = torch.stack([(-(centre - shifted(dy, dx)).abs() / scale).mean(dim=0) for dy, dx in offsets])
    return softmax(logits, dim=0)


def propagate(
    mask: torch.Tensor, weights: torch.Tensor, offsets: Sequence[tuple[int, int]], steps: int
) -> torch.Tensor:
    """``steps`` times ``M(p) ← Σ_n w_n(p)·M(p + n)`` on (C, H, W), borders replicated."""
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    _, height, width = mask.shape
    for _ in range(steps):
        padded = F.pad(mask, (reach, reach, reach, reach), mode="replicate")
        out = torch.zeros_like(mask)
        for weight, (dy, dx) in zip(weights, offsets):
            out.addcmul_(padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width], weight)
        mask = out
        del padded
    return mask


def pamr(
    image: torch.Tensor,
    logits: torch.Tensor,
    steps: int = 10,
    dilations: Sequence[int] = (8, 16),
    *,
    block_rows: int | None = None,
    tile_elements: int | None = None,
) -> torch.Tensor:
    """The reference's ``PAMR(steps, dilations)(image, logits)`` on full-size inputs:
    ``image`` (3, H, W) or (1, 3, H, W), ``logits`` (K, H, W) or (1, K, H, W); returns the
    refined logits in float32, with the shape of ``logits``. The whole image is one block
    unless ``block_rows`` is given; channels go in chunks of ``tile_elements``."""
    batched = logits.dim() == 4
    if batched and logits.shape[0] != 1:
        raise ValueError("pamr refines one image at a time")
    flat = logits[0] if batched else logits
    guide = _image(image).float()
    if guide.shape[-2:] != flat.shape[-2:]:
        raise ValueError(f"image {tuple(guide.shape[-2:])} and logits {tuple(flat.shape[-2:])} differ in size")
    height, width = flat.shape[-2:]
    refiner = BandRefiner(
        lambda c0, c1, a, b: flat[c0:c1, a:b],
        lambda a, b: guide[:, a:b],
        flat.shape[0],
        height,
        width,
        steps,
        dilations,
        block_rows=block_rows or height,
        tile_elements=tile_elements,
    )
    starts = range(0, height, refiner.block_rows)
    if len(starts) == 1:
        out = refiner.band(0, height)
    else:
        out = torch.cat([refiner.band(a, min(height, a + refiner.block_rows)) for a in starts], dim=1)
    return out[None] if batched else out


def _image(image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError("PAMR is guided by one image at a time")
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"expected an image (3, H, W), got shape {tuple(image.shape)}")
    return image
