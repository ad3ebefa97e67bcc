"""Image and mask codecs: formats, modes, orientation, limits, RLE."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from mic2e import codecs
from PIL import Image


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size, with a tiny (compressed) body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = zlib.compress(row * 16, 9)  # only a few rows: decoding it would fail late
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_decode_png_jpeg_webp_to_rgb():
    img = Image.new("RGB", (7, 5), (10, 200, 30))
    for fmt in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out = codecs.decode_image(buf.getvalue())
        assert out.mode == "RGB" and out.size == (7, 5)


def test_decompression_bomb_refused_before_decoding(monkeypatch):
    data = bomb_png(30_000, 30_000)  # 900 Mpx claimed, a few hundred bytes sent
    assert len(data) < 2000
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(codecs.CodecError, match="over the limit"):
        codecs.decode_image(data, max_pixels=40_000_000)
    assert loaded == [], "pixels were decoded before the size check"


def test_pixel_limit_is_configurable():
    data = png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(codecs.CodecError):
        codecs.decode_image(data, max_pixels=9_999)
    assert codecs.decode_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("data", [b"", b"not an image", png_bytes(Image.new("RGB", (64, 64)))[:60]])
def test_corrupt_empty_truncated_refused(data):
    with pytest.raises(codecs.CodecError):
        codecs.decode_image(data)


def test_gif_is_not_accepted():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "GIF")
    with pytest.raises(codecs.CodecError, match="PNG, JPEG or WebP"):
        codecs.decode_image(buf.getvalue())


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert codecs.image_size(buf.getvalue()) == (20, 40)
    assert codecs.decode_image(buf.getvalue()).size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    img = Image.new(mode, (6, 4))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    out = codecs.decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (6, 4)


def test_sixteen_bit_keeps_its_range():
    arr = np.full((2, 2), 65535, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = np.asarray(codecs.decode_image(png_bytes(img)))
    assert out.min() == 255


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    out = np.asarray(codecs.decode_image(png_bytes(img)))
    assert (out == 255).all()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_roundtrip(fmt):
    img = Image.new("RGB", (9, 3), (1, 2, 3))
    out = codecs.decode_image(codecs.encode_image(img, fmt))
    assert out.size == (9, 3)


def test_encode_unknown_format():
    with pytest.raises(codecs.CodecError):
        codecs.encode_image(Image.new("RGB", (1, 1)), "bmp")


def test_mask_png_roundtrip_is_one_bit():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.5
    data = codecs.encode_mask_png(mask)
    assert Image.open(io.BytesIO(data)).mode == "1"
    assert (codecs.decode_mask_png(data) == mask).all()


def test_mask_png_from_greyscale_thresholds_at_127():
    arr = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    assert codecs.decode_mask_png(png_bytes(Image.fromarray(arr))).tolist() == [
        [False, False, True, True]]


@pytest.mark.parametrize("seed", range(5))
def test_rle_roundtrip(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 30, size=2)
    mask = rng.random((h, w)) > rng.random()
    counts = codecs.rle_encode(mask)
    assert sum(counts) == h * w
    assert (codecs.rle_decode(counts, int(w), int(h)) == mask).all()


def test_rle_is_column_major_zeros_first():
    mask = np.array([[1, 0], [1, 1]], dtype=bool)
    # column-major: 1,1,0,1 -> runs: 0 zeros, 2 ones, 1 zero, 1 one
    assert codecs.rle_encode(mask) == [0, 2, 1, 1]


def test_rle_wrong_total_refused():
    with pytest.raises(codecs.CodecError, match="sum"):
        codecs.rle_decode([1, 2], 2, 2)


def test_mask_box_encloses_mask():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    assert codecs.mask_box(mask) == (3, 2, 9, 5)
    assert codecs.mask_box(np.zeros((3, 3), bool)) == (0, 0, 0, 0)


# --- integrity: what a damaged upload is told -------------------------------------------


def _chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, kind, length) of each PNG chunk."""
    out, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        out.append((at, kind, length))
        at += 12 + length
    return out


def _noisy_png() -> bytes:
    rng = np.random.default_rng(0)
    return png_bytes(Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)))


def test_a_png_whose_pixel_data_fails_its_crc_is_refused_as_corrupt():
    data = bytearray(_noisy_png())
    at, kind, length = next(c for c in _chunks(bytes(data)) if c[1] == b"IDAT")
    data[at + 8 + length // 2] ^= 0x01  # one bit of compressed pixels; CRC left as it was
    with pytest.raises(codecs.CodecError) as info:
        codecs.decode_image(bytes(data))
    message = str(info.value)
    assert "IDAT" in message and "CRC" in message and "not a PNG" not in message


def test_a_png_cut_before_iend_is_refused_as_truncated():
    data = _noisy_png()
    at, _, _ = next(c for c in _chunks(data) if c[1] == b"IEND")
    with pytest.raises(codecs.CodecError, match="truncated"):
        codecs.decode_image(data[:at])  # every pixel chunk whole, only IEND missing


def test_messages_name_our_limit_and_never_an_object_repr():
    with pytest.raises(codecs.CodecError) as bomb:
        codecs.decode_image(bomb_png(40_000, 40_000), max_pixels=40_000_000)  # over Pillow's too
    assert str(bomb.value) == "image is 1600000000 pixels, over the limit of 40000000"
    with pytest.raises(codecs.CodecError) as junk:
        codecs.decode_image(b"hello world")
    assert str(junk.value) == "not a PNG, JPEG or WebP image"


def test_a_mask_png_must_hold_the_size_it_declares(monkeypatch):
    data = codecs.encode_mask_png(np.ones((48, 64), bool))
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(codecs.CodecError, match="mask says 7x7, its PNG is 64x48"):
        codecs.decode_mask_png(data, size=(7, 7))
    assert loaded == [], "pixels were decoded before the size check"


def test_rle_with_more_runs_than_pixels_is_refused_before_decoding():
    with pytest.raises(codecs.CodecError, match="more runs than pixels"):
        codecs.rle_decode([0] * 10_000_000, 4, 4)
