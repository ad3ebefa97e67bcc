"""Image codecs on phone-size photos: what each output encoding costs, and decoding.

Picks the servers' lossless encoder by measurement (issue 23): on detailed photos of 1 and
12 MP (and a patch of about 4 % of the 12 MP one, RGBA as patches travel), the time and
size of PNG at zlib levels 0, 1, 3, 6 (Pillow's default, the old setting) and 9, lossless
WebP at Pillow's default effort and at method 0, and JPEG quality 95; then JPEG decoding
at full scale and at the reduced scale Pillow's draft mode gives for SAM3's 1008 px.
Medians of `--repeats` runs, in this process (Pillow and its zlib-ng build as installed).

    uv run python -m benchmarks.encoders [--repeats 3] [--record]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._common import add_output_args, environment, finish, now, table
from benchmarks.photo_path import photo

NAME = "encoders"
SIZES = {"1MP": (1152, 864), "12MP": (4032, 3024)}
#: (name, Pillow format, save options)
ENCODINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("png-0", "PNG", {"compress_level": 0}),
    ("png-1", "PNG", {"compress_level": 1}),
    ("png-3", "PNG", {"compress_level": 3}),
    ("png-6 (Pillow's default; the old setting)", "PNG", {}),
    ("png-9", "PNG", {"compress_level": 9}),
    ("webp-lossless (default effort)", "WEBP", {"lossless": True}),
    ("webp-lossless method 0", "WEBP", {"lossless": True, "method": 0, "quality": 0}),
    ("jpeg-95", "JPEG", {"quality": 95}),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encoders",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    p.add_argument("--sizes", default=",".join(SIZES),
                   help=f"which of {', '.join(SIZES)} (comma-separated)")
    p.add_argument("--skip-slow", action="store_true",
                   help="leave out lossless WebP at its default effort (seconds per MP)")
    add_output_args(p)
    return p


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds, last result) of `repeats` calls after one untimed call."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def encode(image: Any, fmt: str, options: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def measure(label: str, image: Any, repeats: int, skip_slow: bool) -> list[dict[str, Any]]:
    rows = []
    for name, fmt, options in ENCODINGS:
        if skip_slow and name.startswith("webp-lossless (default"):
            continue
        if fmt == "JPEG" and image.mode == "RGBA":
            continue
        seconds, data = timed(lambda f=fmt, o=options: encode(image, f, o), repeats)
        rows.append({"image": label, "encoding": name, "seconds": seconds, "bytes": len(data),
                     "megapixels": image.width * image.height / 1e6})
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from PIL import Image, features

    args = build_parser().parse_args(argv)
    started = now()
    rows: list[dict[str, Any]] = []
    decoding: list[dict[str, Any]] = []
    for key in args.sizes.split(","):
        width, height = SIZES[key]
        data = photo(width, height, seed=1)
        image = Image.open(io.BytesIO(data))
        image.load()
        rows += measure(key, image, args.repeats, args.skip_slow)
        if key == "12MP":  # a patch: about 4 % of the photo, RGBA
            w, h = int(width * 0.2), int(height * 0.2)
            patch = image.crop((width // 3, height // 3, width // 3 + w, height // 3 + h))
            rows += measure("12MP patch (4 %, RGBA)", patch.convert("RGBA"), args.repeats,
                            args.skip_slow)

        def decode(draft: tuple[int, int] | None = None, data: bytes = data) -> Any:
            img = Image.open(io.BytesIO(data))
            if draft:
                img.draft("RGB", draft)
            img.load()
            return img

        full, img = timed(decode, args.repeats)
        reduced, small = timed(lambda: decode((1008, 1008)), args.repeats)
        decoding.append({"image": key, "jpeg_bytes": len(data), "full_s": full,
                         "draft_1008_s": reduced, "draft_size": list(small.size),
                         "ratio": reduced / full})
    result = {"environment": {**environment(NAME, argv, started),
                              "pillow": Image.__version__,
                              "zlib": features.version("zlib"),
                              "webp": features.version("webp"),
                              "jpeg": features.version("jpg")},
              "encodings": rows, "jpeg_decoding": decoding}
    print(table(["image", "encoding", "time", "MB"],
                [[r["image"], r["encoding"], f"{r['seconds'] * 1000:.0f} ms",
                  f"{r['bytes'] / 1e6:.2f}"] for r in rows]))
    print(table(["image", "JPEG decode", "draft (1008 px)", "draft size"],
                [[d["image"], f"{d['full_s'] * 1000:.0f} ms", f"{d['draft_1008_s'] * 1000:.0f} ms",
                  "x".join(map(str, d["draft_size"]))] for d in decoding]))
    return finish(result, args, NAME)


if __name__ == "__main__":
    main()
