"""Image and mask codecs shared by the client and the servers (numpy + Pillow, no torch).

Images: PNG, JPEG and WebP in; EXIF orientation applied; every mode normalised to 8-bit
RGB; the ICC colour profile kept (`image.info["icc_profile"]`) and written into every
output encoded from it; the pixel count and the aspect ratio are checked from the header
BEFORE any pixel is decoded, so a decompression bomb or a 1x2,000,000 strip costs nothing;
a PNG's every chunk (pixels included) must pass its CRC and the file must end with IEND,
so a damaged or truncated upload is refused, never drawn half-grey. Out: PNG at zlib
level 1, JPEG quality 95, lossless WebP at its fastest effort (each chosen by measurement:
`benchmarks/encoders.py`). Patches: the changed part of an edited picture as RGBA
(`patch_image`, `apply_patch`). Masks: 1-bit PNG and COCO-style uncompressed RLE
(column-major, runs of 0s first), always at the image's size.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Input formats accepted (Pillow format names).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
#: Default limit on decoded pixels (about 40 megapixels, e.g. 8000x5000).
DEFAULT_MAX_PIXELS = 40_000_000
#: Longest side over shortest side of an image any server takes. The models work on the
#: whole picture at a bounded size (SAM3 1008x1008, ObjectClear a 512 short side, FLUX
#: about 1 MP): past 8:1 (FLUX's own 2048 / 256) they would see a sliver, or be asked for
#: a working size that costs minutes. One rule, from the header, on every server.
MAX_ASPECT_RATIO = 8
#: zlib level of PNG output: level 1 encodes a detailed photo 2.2x faster than Pillow's
#: default (6) for 12 % more bytes (README "Output formats").
PNG_LEVEL = 1
_OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
#: Largest side a WebP file can have.
WEBP_MAX_SIDE = 16383
#: Output formats by file extension (what the CLI writes for `-o`).
EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


class CodecError(ValueError):
    """An image or mask could not be decoded or is not acceptable."""


def sha256_hex(data: bytes) -> str:
    """The lowercase hex SHA-256 used as an image reference."""
    return hashlib.sha256(data).hexdigest()


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header only, EXIF orientation applied."""
    with _open(data) as img:
        w, h = img.size
        if _exif_swaps_axes(img):
            w, h = h, w
        return w, h


def shape_problem(width: int, height: int) -> str | None:
    """Why no model can use an image of this shape (an extreme aspect ratio), or None."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return (f"image is {width}x{height}: one side is more than {MAX_ASPECT_RATIO} times "
                "the other, a shape no model here can use")
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode to an 8-bit RGB image, upright per EXIF, its ICC profile in
    ``info["icc_profile"]``; refuse oversize and extreme shapes unread."""
    return _decode(data, max_pixels, None)[0]


def decode_image_at_least(data: bytes, size: tuple[int, int], *,
                          max_pixels: int = DEFAULT_MAX_PIXELS
                          ) -> tuple[Image.Image, tuple[int, int]]:
    """As `decode_image`, for a model that works at `size` (width, height) or below: a
    JPEG is decoded at the smallest scale (1/2, 1/4, 1/8) that keeps both sides at least
    `size` (Pillow's draft mode: the JPEG decoder skips the finer DCT coefficients, about
    1.6x faster at 12 MP and a quarter of the memory), other formats in full. Returns the
    image and the picture's own upright size (width, height)."""
    return _decode(data, max_pixels, size)


def _decode(data: bytes, max_pixels: int, draft: tuple[int, int] | None
            ) -> tuple[Image.Image, tuple[int, int]]:
    with _open(data, max_pixels) as img:
        w, h = img.size
        if w * h > max_pixels:
            raise CodecError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
        problem = shape_problem(w, h)
        if problem:
            raise CodecError(problem)
        icc = img.info.get("icc_profile")
        swap = _exif_swaps_axes(img)
        try:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", (draft[1], draft[0]) if swap else draft)
            img.load()
            if _orientation(img) != 1:  # (exif_transpose copies even an upright picture)
                img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CodecError(f"image data is corrupt or truncated: {exc}") from None
        out = _to_rgb(img)
        if icc:
            out.info["icc_profile"] = icc
        else:
            out.info.pop("icc_profile", None)
        return out, ((h, w) if swap else (w, h))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _open(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    if not data:
        raise CodecError("image data is empty")
    if data.startswith(_PNG_SIGNATURE):
        _check_png_chunks(data)
    try:
        # Our own limit is checked right after open; Pillow's bomb warning would only
        # duplicate it, and its error would fire before we could name the size.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except Image.DecompressionBombError as exc:
        # Pillow's own (much higher) limit fired first; say ours, and the size if known.
        size = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{size[1]} pixels" if size else "too many pixels"
        raise CodecError(f"image is {what}, over the limit of {max_pixels}") from None
    except UnidentifiedImageError:
        # (Pillow's message quotes the buffer object's repr, which says nothing.)
        raise CodecError("not a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CodecError(f"image data is corrupt: {exc}") from None
    if img.width < 1 or img.height < 1:
        raise CodecError("image has no pixels")
    return img


def _check_png_chunks(data: bytes) -> None:
    """Walk a PNG's chunks: each must fit in the data and pass its CRC, and IEND must come.
    (Pillow checks the header chunks' CRCs only, and none of the pixel data's.)"""
    at = len(_PNG_SIGNATURE)
    while True:
        if at + 8 > len(data):
            raise CodecError("PNG is truncated: it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        end = at + 8 + length + 4
        if end > len(data):
            raise CodecError(f"PNG is truncated: chunk {_chunk_name(kind)} ends past the data")
        body = memoryview(data)[at + 4:at + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(body) & 0xFFFFFFFF != crc:
            raise CodecError(f"PNG is corrupt: chunk {_chunk_name(kind)} at byte {at} fails "
                             "its CRC check")
        if kind == b"IEND":
            return
        at = end


def _chunk_name(kind: bytes) -> str:
    return kind.decode("ascii") if kind.isalpha() else "(unnamed)"


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: upright, also when there is none or it is unreadable)."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make a valid image unreadable
        return 1


def _exif_swaps_axes(img: Image.Image) -> bool:
    return _orientation(img) in (5, 6, 7, 8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: keep the full range rather than clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def encode_image(img: Image.Image, fmt: str = "png", *, icc_profile: bytes | None = None,
                 png_level: int = PNG_LEVEL) -> bytes:
    """Encode as ``png`` (lossless, zlib `png_level`), ``jpeg`` (quality 95) or ``webp``
    (lossless). The ICC profile written is `icc_profile`, else the image's own, if any."""
    name = _OUTPUT_FORMATS.get(fmt.lower())
    if name is None:
        raise CodecError(f"unknown output format {fmt!r}; use one of {sorted(_OUTPUT_FORMATS)}")
    icc = icc_profile or img.info.get("icc_profile")
    extra = {"icc_profile": icc} if icc else {}
    buf = io.BytesIO()
    if name == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=95, **extra)
    elif name == "WEBP":
        # Lossless at the least effort: 12x faster than libwebp's default effort on a
        # 12 MP photo for 30 % more bytes, and 2.4x faster than PNG at level 1
        # (benchmarks/results/*-encoders.json). `exact`: transparent pixels are written
        # as they are (a patch's are black already) instead of being reworked: one pass less.
        img.save(buf, "WEBP", lossless=True, method=0, quality=0, exact=True, **extra)
    else:
        img.save(buf, "PNG", compress_level=png_level, **extra)
    return buf.getvalue()


def format_of(path: str) -> str:
    """The output format a file name's extension names (``photo.jpg`` -> ``jpeg``)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        what = f"a {ext} file" if ext else "a file without an extension"
        raise CodecError(f"cannot write {what}: name it .png, .jpg, .jpeg or .webp")
    return EXTENSIONS[ext]


def patch_image(pixels: np.ndarray, changed: np.ndarray) -> Image.Image:
    """An RGBA patch: `pixels` (h, w, 3) uint8 where `changed` (h, w) is set (alpha 255),
    transparent black elsewhere (alpha 0; black compresses best)."""
    # Pasted through the mask by Pillow: one pass in C instead of building the four channels
    # with numpy (the 0/255 mask copies exactly, no blending arithmetic).
    alpha = Image.fromarray(np.ascontiguousarray(changed).view(np.uint8) * np.uint8(255))
    out = Image.new("RGBA", alpha.size, (0, 0, 0, 0))
    out.paste(Image.fromarray(np.ascontiguousarray(pixels)), (0, 0), alpha)
    return out


def decode_patch(data: bytes) -> Image.Image:
    """A patch's encoded bytes -> its RGBA image (as `apply_patch` takes it)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img if img.mode == "RGBA" else img.convert("RGBA")


def apply_patch(base: Image.Image, patch: Image.Image, x: int, y: int, *,
                in_place: bool = False) -> Image.Image:
    """`base` (RGB) with the opaque pixels of the RGBA `patch` copied to (x, y); every
    other pixel is base's own, byte for byte. A new image (base itself with `in_place`,
    for a caller that decoded it for this); base's ICC profile is kept."""
    if patch.mode != "RGBA":
        raise CodecError(f"a patch is an RGBA image, got mode {patch.mode}")
    if x < 0 or y < 0 or x + patch.width > base.width or y + patch.height > base.height:
        raise CodecError(f"a {patch.width}x{patch.height} patch at ({x}, {y}) does not fit a "
                         f"{base.width}x{base.height} image")
    out = base if in_place else base.copy()
    # Alpha is 0 or 255, so paste copies exactly (no blending arithmetic on the pixels);
    # the RGBA patch is its own mask (no RGB and alpha copies of it).
    out.paste(patch, (x, y), patch)
    return out


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A boolean HxW mask as a 1-bit greyscale PNG.

    Written here rather than by Pillow: rows packed 8 pixels a byte, no filter - much
    faster than Pillow's encoder (masks are long runs, which the filters do not help),
    and `decode_mask_png` reads such a file back without Pillow's unpacking. zlib level
    1: a 12 MP mask of one object takes 4 ms instead of level 6's 10 ms, for 8 kB
    instead of 3 kB."""
    mask = _as_bool_mask(mask)
    h, w = mask.shape
    rows = np.zeros((h, 1 + (w + 7) // 8), np.uint8)  # a 0 (no filter) before each row
    rows[:, 1:] = np.packbits(mask, axis=1)
    header = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # 1-bit grey, no interlace
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _unfiltered_1bit_png(data: bytes, w: int, h: int) -> np.ndarray | None:
    """The pixels of a 1-bit greyscale, non-interlaced PNG whose rows all use no filter
    (what `encode_mask_png` writes), unpacked with numpy; None for any other PNG."""
    depth, colour, _, _, interlace = data[24:29]
    if (depth, colour, interlace) != (1, 0, 0):
        return None
    idat, at = [], len(_PNG_SIGNATURE)
    while at < len(data):  # the chunks were walked and CRC-checked by _open already
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            idat.append(data[at + 8:at + 8 + length])
        at += 12 + length
    stride = 1 + (w + 7) // 8
    try:
        raw = zlib.decompressobj().decompress(b"".join(idat), h * stride)
    except zlib.error:
        return None  # Pillow says what is wrong
    if len(raw) != h * stride:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride)
    if rows[:, 0].any():
        return None
    # Only the rows the mask touches are unpacked; the rest stay calloc's zero pages,
    # never written (an object's mask is a band of a 12 MP photo's 12 MB).
    touched = np.flatnonzero(rows[:, 1:].any(axis=1))
    mask = np.zeros((h, w), bool)
    if touched.size:
        y0, y1 = touched[0], touched[-1] + 1
        mask[y0:y1] = np.unpackbits(rows[y0:y1, 1:], axis=1, count=w).view(bool)
    return mask


def decode_mask_png(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    size: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG mask of any mode -> boolean HxW (a pixel is on when its grey value > 127).
    `size`: the (width, height) it must have, checked before any pixel is decoded."""
    with _open(data, max_pixels) as img:
        w, h = img.size
        if size is not None and (w, h) != tuple(size):
            raise CodecError(f"mask says {size[0]}x{size[1]}, its PNG is {w}x{h}")
        if w * h > max_pixels:
            raise CodecError(f"mask is {w}x{h}, over the limit of {max_pixels} pixels")
        if img.format == "PNG" and (fast := _unfiltered_1bit_png(data, w, h)) is not None:
            return fast
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise CodecError(f"mask data is corrupt or truncated: {exc}") from None
        if img.mode == "1":
            return np.asarray(img, dtype=bool).copy()
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = _to_rgb(img)
        grey = np.asarray(img.convert("L"))
        return grey > 127


def rle_encode(mask: np.ndarray) -> list[int]:
    """COCO-style uncompressed RLE counts (column-major, zeros first)."""
    flat = _as_bool_mask(mask).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return counts


def rle_decode(counts: list[int] | tuple[int, ...], width: int, height: int) -> np.ndarray:
    """Counts -> boolean HxW mask; the counts must sum to width * height."""
    if width < 1 or height < 1:
        raise CodecError(f"mask size {width}x{height} is empty")
    if len(counts) > width * height + 1:
        raise CodecError(f"{len(counts)} RLE counts for {width}x{height} = {width * height} "
                         "pixels: more runs than pixels")
    arr = np.asarray(counts, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise CodecError("RLE counts must not be negative")
    total = int(arr.sum())
    if total != width * height:
        raise CodecError(f"RLE counts sum to {total}, expected {width}x{height} = {width * height}")
    values = np.zeros(arr.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, arr)
    return flat.reshape((height, width), order="F")


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1), x1/y1 exclusive; (0, 0, 0, 0) for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return (0, 0, 0, 0)
    return (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise CodecError(f"a mask must be 2-D (HxW), got shape {mask.shape}")
    return mask.astype(bool, copy=False)
