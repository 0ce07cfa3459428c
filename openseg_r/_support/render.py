"""Pictures of a result: the label PNG and an overlay with a legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE_LIMIT = 256
UNKNOWN_COLOUR = (128, 128, 128)


def class_colors(count: int) -> np.ndarray:
    """The PASCAL VOC bit-interleaved colour map, extended to any number of classes."""
    colors = np.zeros((count, 3), np.uint8)
    for index in range(count):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
            if value == 0:
                break
        colors[index] = (r, g, b)
    return colors


def format_share(fraction: float, decimals: int = 1, present: bool = False) -> str:
    """A share of the image as a percentage, ``"12.3%"``. A class that is present never
    reads as 0%, nor one that is not everything as 100%: shares that round to either
    show as ``"<0.1%"`` and ``">99.9%"``. ``present`` says the class has pixels even
    where its stored fraction (rounded to 6 decimals) is 0."""
    percent, step = 100 * fraction, 10.0**-decimals
    text = f"{percent:.{decimals}f}"
    if (0 < percent or present) and float(text) == 0:
        return f"<{step:.{decimals}f}%"
    if percent < 100 and float(text) >= 100:
        return f">{100 - step:.{decimals}f}%"
    return f"{text}%"


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """A palette PNG image when the vocabulary fits in 256 colours, else 16-bit grayscale.

    Either way a pixel's value is its class index in the vocabulary; pixels the
    self-check marked unknown (label -1) are 255, or 65535 in 16-bit maps, as the
    ignore value of segmentation benchmarks.
    """
    if num_classes < PALETTE_LIMIT:
        image = Image.fromarray(np.where(labels < 0, 255, labels).astype(np.uint8), mode="P")
        palette = class_colors(PALETTE_LIMIT)
        palette[255] = UNKNOWN_COLOUR
        image.putpalette(palette.ravel().tolist())
        return image
    return Image.fromarray(np.where(labels < 0, 65535, labels).astype(np.uint16))


def overlay_image(
    rgb: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    alpha: float = 0.5,
    outlines: list[tuple[int, np.ndarray]] | None = None,
) -> Image.Image:
    """The photo with each class's pixels tinted and a legend of the classes present (largest first);
    ``outlines`` (class index, bool mask) are drawn as each instance's border, darker than its class."""
    colors = np.vstack([class_colors(len(names)), np.array([UNKNOWN_COLOUR], np.uint8)])
    tinted = colors[np.where(labels < 0, len(names), labels)]  # unknown pixels in grey
    blended = (rgb.astype(np.float32) * (1 - alpha) + tinted.astype(np.float32) * alpha).astype(np.uint8)
    if outlines:
        from scipy.ndimage import binary_erosion
    for index, mask in outlines or []:
        border = mask & ~binary_erosion(mask, iterations=max(1, min(mask.shape) // 300))
        blended[border] = (colors[index].astype(np.float32) * 0.55).astype(np.uint8)
    flat = labels.ravel()
    present = np.bincount(flat[flat >= 0], minlength=len(names))
    order = [i for i in np.argsort(-present) if present[i] > 0]
    total = max(1, labels.size)
    legend = [(tuple(int(c) for c in colors[i]), f"{names[i]} ({format_share(present[i] / total)})") for i in order]
    unknown = int(flat.size - (flat >= 0).sum())
    if unknown:
        legend.append((UNKNOWN_COLOUR, f"unknown ({format_share(unknown / total)})"))
    return _with_legend(blended, legend)


def _with_legend(picture: np.ndarray, legend: list[tuple[tuple[int, ...], str]]) -> Image.Image:
    """``picture`` with a white column on its right: a swatch and a line of text per entry."""
    font = _font(max(12, min(picture.shape[:2]) // 30))
    row = font.size + 6 if hasattr(font, "size") else 18
    width = max([int(_text_width(font, text)) for _, text in legend] + [0]) + row + 16
    canvas = Image.new("RGB", (picture.shape[1] + width, max(picture.shape[0], row * len(legend) + 8)), "white")
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for line, (colour, text) in enumerate(legend):
        top = 4 + line * row
        left = picture.shape[1] + 6
        draw.rectangle([left, top, left + row - 6, top + row - 6], fill=colour, outline="black")
        draw.text((left + row, top), text, fill="black", font=font)
    return canvas


def panoptic_overlay_image(rgb: np.ndarray, ids: np.ndarray, segments, names: list[str], alpha: float = 0.5):
    """The photo with each panoptic segment in its own colour (a thing's is its class colour
    shifted per object) and outlined, void untinted, and a legend: each class with how many
    segments it has."""
    from scipy.ndimage import binary_erosion

    base = class_colors(len(names)).astype(np.float32)
    blended = rgb.astype(np.float32).copy()
    counts: dict[int, int] = {}
    iterations = max(1, min(ids.shape) // 300)
    for segment in segments:
        x, y, w, h = segment.bbox  # each segment drawn within its box (plus the erosion's reach)
        y0, x0 = max(0, y - iterations), max(0, x - iterations)
        window = (slice(y0, y + h + iterations), slice(x0, x + w + iterations))
        mask = ids[window] == segment.id
        colour = base[segment.category_id]
        if segment.isthing:  # objects of one class: the same hue, other shades
            nth = counts.get(segment.category_id, 0)
            colour = np.clip(colour * (0.55 + 0.45 * ((nth * 0.618) % 1.0)) + 30 * (nth % 2), 0, 255)
        counts[segment.category_id] = counts.get(segment.category_id, 0) + 1
        part = blended[window]
        part[mask] = part[mask] * (1 - alpha) + colour * alpha
        part[mask & ~binary_erosion(mask, iterations=iterations)] = colour * 0.45
    legend = [
        (tuple(int(c) for c in base[c]), f"{names[c]} ({n} segment{'s' if n > 1 else ''})")
        for c, n in sorted(counts.items(), key=lambda item: -item[1])
    ]
    return _with_legend(blended.astype(np.uint8), legend)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    try:
        return font.getlength(text)
    except AttributeError:
        return 7 * len(text)
