"""An edit of a photo as the input plus what changed (no torch, no protobuf).

A masked edit (ObjectClear's Clear, FLUX's Inpaint) changes a region of the picture; the
rest must stay the input's own pixels, at full resolution. Keeping the result as the
input, a box and the box's new pixels lets a servicer send only the changed part (a
patch) and build the whole picture only for a caller that wants it - so the cost around
the model follows the edited area, not the photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mic2e import codecs
from PIL import Image

__all__ = ["Box", "Edit"]

#: (x0, y0, x1, y1) in pixels, x1 / y1 exclusive.
Box = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class Edit:
    """The result of an edit of `base` (the decoded input, RGB, its ICC profile in
    ``info``): inside `box`, `pixels` ((y1 - y0, x1 - x0, 3) uint8) where `changed` (same
    height and width, bool) is set; every other pixel is base's own. `box` is the tight
    box of `changed` ((0, 0, 0, 0) when nothing changed)."""

    base: Image.Image
    box: Box
    pixels: np.ndarray
    changed: np.ndarray

    @classmethod
    def of(cls, base: Image.Image, box: Box, pixels: np.ndarray, changed: np.ndarray) -> Edit:
        """An edit whose box is trimmed to the tight box of `changed`."""
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        if rows.size == 0:
            return cls(base, (0, 0, 0, 0), pixels[:0, :0], changed[:0, :0])
        x0, y0 = box[0] + int(cols[0]), box[1] + int(rows[0])
        ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        return cls(base, (x0, y0, x0 + xs.stop - xs.start, y0 + ys.stop - ys.start),
                   pixels[ys, xs], changed[ys, xs])

    @classmethod
    def whole(cls, base: Image.Image, result: Image.Image) -> Edit:
        """Every pixel replaced by `result` (at base's size): the reference's picture."""
        pixels = np.asarray(result.convert("RGB"))
        return cls(base, (0, 0, base.width, base.height), pixels,
                   np.ones(pixels.shape[:2], dtype=bool))

    @property
    def icc_profile(self) -> bytes | None:
        """The input's ICC profile: every output of this input carries it."""
        return self.base.info.get("icc_profile")

    @property
    def image(self) -> Image.Image:
        """The whole picture at the input's size (made on each access: take it once)."""
        x0, y0, x1, y1 = self.box
        if (x1 - x0, y1 - y0) == self.base.size and self.changed.all():
            out = Image.fromarray(self.pixels)
        else:
            out = self.base.copy()
            if x1 > x0:
                out.paste(Image.fromarray(self.pixels), (x0, y0),
                          Image.fromarray(self.changed.astype(np.uint8) * 255))
        if self.icc_profile:
            out.info["icc_profile"] = self.icc_profile
        return out

    def patch(self) -> Image.Image:
        """The changed part as an RGBA image of the box: alpha 255 on changed pixels."""
        if self.box[2] <= self.box[0]:  # nothing changed: a 1x1 transparent patch
            return Image.new("RGBA", (1, 1), (0, 0, 0, 0))
        return codecs.patch_image(self.pixels, self.changed)

    def region(self) -> np.ndarray:
        """The changed pixels as a bool mask at the input's size."""
        out = np.zeros((self.base.height, self.base.width), dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.changed
        return out


@dataclass(frozen=True, eq=False)
class EditOutput:
    """What a masked edit's model gives back: the `Edit` of the input, the (dilated) mask it
    repainted, what it takes to make it again (seed, steps), and the wall seconds of the
    work around the model (`timings`: "prepare", "composite"). Keyword fields after these
    belong to each model's output."""

    edit: Edit
    mask: np.ndarray
    seed: int
    steps: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def image(self) -> Image.Image:
        """The whole picture (built on each access)."""
        return self.edit.image
