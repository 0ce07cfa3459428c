"""Load any image a user may have into an RGB uint8 array, or say clearly why not.

Rules (all stated, none silent):
- the pixel count, the short side and the aspect ratio are checked from the header,
  before the pixels are decoded (a 24 KB PNG may claim 3,125,000 x 8 pixels);
- EXIF orientation is applied, as photo viewers do;
- 16-bit and 32-bit integer images are scaled to 8 bits by their bit depth
  (a 16-bit value v becomes v / 257); float images are scaled by their min/max;
- grayscale, palette, CMYK and YCbCr images are converted to RGB;
- transparent pixels are composited over white.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from openseg_r.errors import ImageError

DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE = 8
# No photo is 100 times longer than it is wide; the segmenter could not resolve such a strip
# anyway (at the default 2048-pixel long side, its short side would shrink under one patch).
MAX_ASPECT_RATIO = 100


UNREADABLE = "not an image file, or a format PIL cannot read"


def load_image(
    source: str | Path | bytes | np.ndarray | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Return an ``H x W x 3`` uint8 RGB array from a path, bytes, PIL image or array."""
    if isinstance(source, np.ndarray):
        return _check_size(_array_to_rgb(source), max_pixels)
    if isinstance(source, Image.Image):
        _check_header_size(source.size, max_pixels)
        return _check_size(_pil_to_rgb(source), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), "<bytes>", max_pixels)
    path = Path(source)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a regular file: {path}")
    try:
        with path.open("rb") as handle:
            return _decode(handle, str(path), max_pixels)
    except PermissionError:
        raise ImageError(f"image is not readable (permission denied): {path}") from None


def _decode(handle, label: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # We do our own pixel limit; PIL's bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)  # reads the header only
            _check_header_size(image.size, max_pixels)
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{UNREADABLE}: {label}") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageError(
            f"image is too large to decode safely (its header claims over {limit:,} pixels): {label}"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image is corrupt or truncated: {label} ({exc})") from None
    return _check_size(_pil_to_rgb(image), max_pixels)


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(raise max_pixels to allow it)"
        )


def _check_header_size(size: tuple[int, int], max_pixels: int) -> None:
    """Everything that can be refused from the width and height alone, so that no pixel
    of an image that will be refused is ever decoded."""
    width, height = size
    _check_pixel_count(size, max_pixels)
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"image is {width}x{height}; each side must be at least {MIN_SIDE} pixels")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ImageError(
            f"image is {width}x{height}: its long side is more than {MAX_ASPECT_RATIO} times its "
            "short side; crop it into pieces closer to square"
        )


def _check_size(rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    _check_header_size((width, height), max_pixels)
    return rgb


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the pixels
        pass
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _gray_to_rgb(np.asarray(image, dtype=np.uint16).astype(np.float64) / 257.0)
    if mode == "I":
        values = np.asarray(image, dtype=np.int64)
        top = 65535.0 if values.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max)
        return _gray_to_rgb(np.clip(values, 0, None).astype(np.float64) * (255.0 / top))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return _gray_to_rgb(_minmax(values))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.mode == "RGBA":
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"array image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = array.astype(np.float64) / 257.0
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("float image contains NaN or infinite values")
        array = array * 255.0 if array.max(initial=0) <= 1.0 else array
    elif array.dtype != np.uint8:
        raise ImageError(f"unsupported array dtype {array.dtype}")
    array = np.clip(array, 0, 255)
    if array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float64) / 255.0
        array = array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(np.round(array).astype(np.uint8))


def _minmax(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ImageError("float image has no finite values")
    low, high = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(values, nan=low) - low) / (high - low or 1.0)
    return np.clip(scaled, 0, 1) * 255.0


def _gray_to_rgb(values: np.ndarray) -> np.ndarray:
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
