"""Pictures the `mic2e` CLI writes for people to look at (internal to `mic2e.cli`): the
masks found, coloured over the photo with their boxes and scores; a before / after pair.
Both are drawn at the photo's own size and keep its colour profile."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mic2e.types import Instance

#: Instance colours, in turn: far apart from each other and readable with white text.
_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40)]
#: How much of an instance's colour covers its pixels.
_TINT = 0.5


def overlay(photo: Image.Image, instances: Sequence[Instance]) -> Image.Image:
    """`photo` with each instance's mask tinted in its colour, its box drawn and labelled
    `#i score`."""
    pixels = np.array(photo.convert("RGB"))
    for i, inst in enumerate(instances):
        colour = np.array(_COLOURS[i % len(_COLOURS)], np.float32)
        tinted = pixels[inst.mask].astype(np.float32) * (1 - _TINT) + colour * _TINT
        pixels[inst.mask] = tinted.round().astype(np.uint8)
    out = Image.fromarray(pixels)
    draw = ImageDraw.Draw(out)
    short = min(out.size)
    line = max(2, short // 300)  # a box stays visible on a 12 MP photo seen whole
    font = ImageFont.load_default(size=max(12, short // 40))
    for i, inst in enumerate(instances):
        colour = _COLOURS[i % len(_COLOURS)]
        x0, y0, x1, y1 = (int(round(v)) for v in inst.box)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=line)
        label = f"#{i} {inst.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tag_w, tag_h = right - left + 2 * line, bottom - top + 2 * line
        # Above the box, or inside its top when the box touches the picture's top.
        tag_y = y0 - tag_h if y0 >= tag_h else y0
        draw.rectangle((x0, tag_y, x0 + tag_w, tag_y + tag_h), fill=colour)
        draw.text((x0 + line - left, tag_y + line - top), label, fill=(255, 255, 255),
                  font=font)
    return _with_profile(out, photo)


def side_by_side(before: Image.Image, after: Image.Image) -> Image.Image:
    """`before` and `after` next to each other at the same height, a thin white gap
    between them."""
    if after.height != before.height:
        width = max(1, round(after.width * before.height / after.height))
        after = after.resize((width, before.height), Image.Resampling.LANCZOS)
    gap = max(4, before.height // 200)
    out = Image.new("RGB", (before.width + gap + after.width, before.height), (255, 255, 255))
    out.paste(before.convert("RGB"), (0, 0))
    out.paste(after.convert("RGB"), (before.width + gap, 0))
    return _with_profile(out, before)


def _with_profile(out: Image.Image, photo: Image.Image) -> Image.Image:
    """`out`, carrying `photo`'s colour profile (its pixels are in that colour space)."""
    if photo.info.get("icc_profile"):
        out.info["icc_profile"] = photo.info["icc_profile"]
    return out
