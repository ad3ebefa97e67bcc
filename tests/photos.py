"""Photo-like test pictures: fine detail everywhere (as a phone photo has), and the
colour profile phones embed. Made in the test, nothing downloaded."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def detailed_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A procedural texture with detail at every scale: a smooth random colour field,
    fine sine gratings and per-pixel noise - any resampling of it is plainly lossy."""
    rng = np.random.default_rng(seed)
    small = rng.random((height // 64 + 2, width // 64 + 2, 3), dtype=np.float32)
    base = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.ogrid[0:height, 0:width]
    texture = (20 * np.sin(xx * 0.37 + 3 * np.sin(yy * 0.05)) * np.cos(yy * 0.23)).astype(
        np.float32)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    pixels = np.clip(base * 0.8 + texture[..., None] + noise + 20, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def jpeg(image: Image.Image, quality: int = 90, icc_profile: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, **({"icc_profile": icc_profile}
                                                 if icc_profile else {}))
    return buf.getvalue()


def box_mask(width: int, height: int, fraction: float, *, at: tuple[float, float] = (0.3, 0.4)
             ) -> np.ndarray:
    """A rectangle covering about `fraction` of the image (its aspect), its top-left corner
    at `at` (fractions of the image's sides)."""
    w, h = int(width * fraction**0.5), int(height * fraction**0.5)
    x0, y0 = int(width * at[0]), int(height * at[1])
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    return mask


def display_p3_icc() -> bytes:
    """An ICC v4 display profile with Display P3's primaries (D50-adapted, as Apple's),
    its white point and the sRGB tone curve: the profile phone photos carry."""

    def s15(*values: float) -> bytes:
        return b"".join(struct.pack(">i", round(v * 65536)) for v in values)

    def mluc(text: str) -> bytes:
        body = text.encode("utf-16-be")
        return b"mluc" + bytes(4) + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(body),
                                                28) + body

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + s15(x, y, z)

    curve = b"para" + bytes(4) + struct.pack(">HH", 3, 0) + s15(
        2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    tags = [(b"desc", mluc("Display P3")), (b"cprt", mluc("No copyright, use freely")),
            (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.5151, 0.2412, -0.0011)),
            (b"gXYZ", xyz(0.2920, 0.6922, 0.0419)), (b"bXYZ", xyz(0.1571, 0.0666, 0.7841)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + bytes([4, 0x30, 0, 0]) + b"mntr"
              + b"RGB XYZ " + bytes(12) + b"acsp" + bytes(4 * 6) + bytes(4)
              + s15(0.9642, 1.0, 0.8249) + bytes(4) + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data
