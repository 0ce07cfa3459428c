"""Every kind of image a user may hand us: decoded correctly or refused clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from openseg_r._support.images import load_image
from openseg_r.errors import ImageError


def save(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path, voc):
    data = io.BytesIO()
    Image.fromarray(voc["rgb"]).save(data, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (16, 16)), "x.png")

    def deny(*args, **kwargs):
        raise PermissionError("denied")

    monkeypatch.setattr(type(path), "open", deny)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_grayscale_becomes_gray_rgb(tmp_path):
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    rgb = load_image(save(tmp_path, Image.fromarray(gray, "L"), "g.png"))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[:, :, 0], gray) and np.array_equal(rgb[:, :, 2], gray)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    rgb = load_image(save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    assert tuple(rgb[0, 0]) == (200, 0, 0)
    assert tuple(rgb[9, 9]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.paste(0, (0, 0, 5, 10))
    rgb = load_image(save(tmp_path, image, "p.png", transparency=0))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 9]) == (0, 255, 0)


def test_16_bit_is_scaled_by_bit_depth(tmp_path):
    values = np.full((12, 12), 65535, np.uint16)
    values[:6] = 257 * 100
    rgb = load_image(save(tmp_path, Image.fromarray(values), "d.png"))
    assert rgb[0, 0, 0] == 100 and rgb[11, 0, 0] == 255


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (12, 12), (0, 255, 255, 0))  # pure red in CMYK
    rgb = load_image(save(tmp_path, cmyk, "c.jpg"))
    assert rgb.shape == (12, 12, 3)
    red, green, blue = rgb[6, 6].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    rgb = load_image(save(tmp_path, image, "o.jpg", exif=exif))
    assert rgb.shape[:2] == (20, 10)


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("L", (3000, 2000)), "big.png")
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or original(self))
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, max_pixels=1_000_000)
    assert decoded == []


def test_tiny_image_is_refused(tmp_path):
    with pytest.raises(ImageError, match="at least"):
        load_image(save(tmp_path, Image.new("RGB", (3, 50)), "t.png"))


def test_bytes_and_arrays(voc):
    data = io.BytesIO()
    Image.fromarray(voc["rgb"]).save(data, format="PNG")
    assert np.array_equal(load_image(data.getvalue()), voc["rgb"])
    assert np.array_equal(load_image(voc["rgb"]), voc["rgb"])
    with pytest.raises(ImageError):
        load_image(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"\x00\x01garbage")
