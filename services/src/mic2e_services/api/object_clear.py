"""The object-clear model's plain request and result, and its fields' one declaration.

No torch, no protobuf: shared by the model (`model.py`), the servicer's conversions
(`convert.py`), the server's settings and the orchestrator, so none of those repeats a
default or a range and the servicer never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mic2e_services.edits import EditOutput
from mic2e_services.errors import FieldViolation
from mic2e_services.masked_image import with_masked_image
from mic2e_services.schema import Field, Request

#: Stage name of its progress events and timings (the servicer's and the orchestrator's).
STAGE = "object_clear"
#: The reference script's working short side: larger images are scaled down to it.
REFERENCE_SHORT_SIDE = 512
#: Longest working side accepted: keeps extreme aspect ratios from exhausting the device.
MAX_WORKING_SIDE = 4096
_SIZE_MULTIPLE = 16

# The reference ObjectClear's defaults (its inference script): 20 steps, guidance 2.5,
# short side 512, fusion on, the prompt's own word "object", no mask growth.
STEPS = Field("options.steps", int, 20, lo=1, hi=100)
GUIDANCE_SCALE = Field("options.guidance_scale", float, 2.5, lo=1.0, hi=20.0)
SHORT_SIDE = Field("options.short_side", int, REFERENCE_SHORT_SIDE, lo=256, hi=2048)
SEED = Field("options.seed", int, lo=0, hi=2**64 - 1)
FUSION = Field("options.fusion", bool, True)
MASK_DILATION = Field("options.mask_dilation", int, 0, lo=0, hi=256)
LABEL = Field("label", str, "", max_chars=100)
# How the result is made at the input's size (ClearStrategy, by name): only the repainted
# region put back over the photo's own pixels (the default), the model run on a crop
# around the mask, or the reference's whole working image resized back.
STRATEGY = Field("options.strategy", str, "resize", choices=("resize", "crop", "reference"))
#: ClearOptions' fields, by ClearQuery attribute.
OPTIONS = {"steps": STEPS, "guidance_scale": GUIDANCE_SCALE, "short_side": SHORT_SIDE,
           "seed": SEED, "fusion": FUSION, "mask_dilation": MASK_DILATION,
           "strategy": STRATEGY}
CLEAR = Request("ClearRequest", {**OPTIONS, "label": LABEL})
#: `crop`: context kept around the (dilated) mask's box on every side, in input pixels
#: (the object-clear server's MIC2E_CROP_MARGIN).
#: ObjectClear repaints from what surrounds the object (its shadow, the background the
#: object hid); 128 px is a quarter of the model's own 512-px working side, and the crop
#: is widened further to at least that side where the image allows (`crop_frame`), so
#: a small object is always seen with a working image's worth of surroundings.
CROP_MARGIN = 128

#: (x0, y0, x1, y1) in pixels, x1 / y1 exclusive.
Box = tuple[int, int, int, int]


def working_size(width: int, height: int, short_side: int = REFERENCE_SHORT_SIDE
                 ) -> tuple[int, int]:
    """(width, height) the model runs at: the reference script's rule.

    A short side below `short_side` is not scaled; otherwise the short side becomes
    `short_side` and the long side ``int(long * short_side / short)``. Both are then
    rounded UP to a multiple of 16 (800x600 -> 688x512, 320x240 stays, 500x300 -> 512x304).
    """

    def up(x: int) -> int:
        return max(_SIZE_MULTIPLE, -(-x // _SIZE_MULTIPLE) * _SIZE_MULTIPLE)

    if min(width, height) < short_side:
        return up(width), up(height)
    if width < height:
        return up(short_side), up(int(height * short_side / width))
    return up(int(width * short_side / height)), up(short_side)


def crop_frame(mask_box: Box, width: int, height: int, short_side: int,
               margin: int = CROP_MARGIN) -> Box:
    """The part of a `width` x `height` image the `crop` strategy runs the model on: the
    mask's box grown by `margin` on every side, then widened (about its centre, shifted
    to stay inside) to at least `short_side` on each axis where the image allows."""

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        lo, hi = max(0, lo - margin), min(size, hi + margin)
        want = min(size, max(hi - lo, short_side))
        lo = min(max(0, (lo + hi - want) // 2), size - want)
        return lo, lo + want

    x0, x1 = span(mask_box[0], mask_box[2], width)
    y0, y1 = span(mask_box[1], mask_box[3], height)
    return x0, y0, x1, y1


def grown_box(mask: np.ndarray, dilation: int) -> Box:
    """The box of `mask` grown by `dilation` (where the dilated mask reaches), clipped."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, mask.shape[1], mask.shape[0])
    h, w = mask.shape
    return (max(0, int(cols[0]) - dilation), max(0, int(rows[0]) - dilation),
            min(w, int(cols[-1]) + 1 + dilation), min(h, int(rows[-1]) + 1 + dilation))


@dataclass(frozen=True, eq=False)
class ClearQuery:
    """One removal request.

    mask: bool (H, W) at the image's size, all the caller's masks already merged.
    label: "" for the reference's prompt ("remove the instance of object"); a word puts
    the caller's label there instead (a departure from the reference). short_side: images
    whose short side is at least this are scaled down to it (the reference's 512); smaller
    ones run at their own size (`working_size`). seed: None draws one (reported in the
    output). fusion: Attention-Guided Fusion. mask_dilation: grow the mask by this many
    pixels (a disk) first. strategy: `STRATEGY`'s choices.
    """

    image: Image.Image
    mask: np.ndarray
    label: str = LABEL.default
    steps: int = STEPS.default
    guidance_scale: float = GUIDANCE_SCALE.default
    short_side: int = SHORT_SIDE.default
    seed: int | None = None
    fusion: bool = FUSION.default
    mask_dilation: int = MASK_DILATION.default
    strategy: str = STRATEGY.default
    #: The server's setting, not the caller's: context kept around the mask by `crop`.
    crop_margin: int = CROP_MARGIN

    def frame(self) -> Box:
        """The part of the image the model runs on: all of it, or (`crop`) the crop
        around the dilated mask."""
        if self.strategy != "crop":
            return (0, 0, self.image.width, self.image.height)
        return crop_frame(grown_box(self.mask, self.mask_dilation), self.image.width,
                          self.image.height, self.short_side, self.crop_margin)

    def working_size(self) -> tuple[int, int]:
        """(width, height) the model runs at: `working_size` of the frame."""
        x0, y0, x1, y1 = self.frame()
        return working_size(x1 - x0, y1 - y0, self.short_side)


def violations(query: ClearQuery) -> list[FieldViolation]:
    """Every bad field of `query`, named as in the API."""
    bad = CLEAR.check(query)
    image = query.image
    bad, usable = with_masked_image(bad, image, query.mask)
    if not usable:
        return bad
    if SHORT_SIDE.problem(query.short_side) is None and STRATEGY.problem(
            query.strategy) is None and max(query.working_size()) > MAX_WORKING_SIDE:
        bad.append(FieldViolation("image", f"aspect ratio too extreme: the long side would "
                                           f"exceed {MAX_WORKING_SIDE} px at short_side "
                                           f"{query.short_side}"))
    return bad


@dataclass(frozen=True, eq=False)
class ClearOutput(EditOutput):
    """The removal as an `Edit` of the input (the picture at the input's size: `image`);
    `timings`: "prepare" (mask growth, crop and resize to the working size) and
    "composite"."""
