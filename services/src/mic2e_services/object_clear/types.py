"""The object-clear model's plain request and result, and its fields' one declaration.

No torch, no protobuf: shared by the model (`model.py`), the servicer's conversions
(`convert.py`), the server's settings and the orchestrator, so none of those repeats a
default or a range and the servicer never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mic2e_services.errors import FieldViolation
from mic2e_services.masked_image import with_masked_image
from mic2e_services.schema import Field, Request

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
#: ClearOptions' fields, by ClearQuery attribute.
OPTIONS = {"steps": STEPS, "guidance_scale": GUIDANCE_SCALE, "short_side": SHORT_SIDE,
           "seed": SEED, "fusion": FUSION, "mask_dilation": MASK_DILATION}
CLEAR = Request("ClearRequest", {**OPTIONS, "label": LABEL})


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


@dataclass(frozen=True, eq=False)
class ClearQuery:
    """One removal request.

    mask: bool (H, W) at the image's size, all the caller's masks already merged.
    label: "" for the reference's prompt ("remove the instance of object"); a word puts
    the caller's label there instead (a departure from the reference). short_side: images
    whose short side is at least this are scaled down to it (the reference's 512); smaller
    ones run at their own size (`working_size`). seed: None draws one (reported in the
    output). fusion: Attention-Guided Fusion. mask_dilation: grow the mask by this many
    pixels (a disk) first.
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


def violations(query: ClearQuery) -> list[FieldViolation]:
    """Every bad field of `query`, named as in the API."""
    bad = CLEAR.check(query)
    image = query.image
    bad, usable = with_masked_image(bad, image, query.mask)
    if not usable:
        return bad
    if SHORT_SIDE.problem(query.short_side) is None and max(
            working_size(image.width, image.height, query.short_side)) > MAX_WORKING_SIDE:
        bad.append(FieldViolation("image", f"aspect ratio too extreme: the long side would "
                                           f"exceed {MAX_WORKING_SIDE} px at short_side "
                                           f"{query.short_side}"))
    return bad


@dataclass(frozen=True, eq=False)
class ClearOutput:
    """The cleared image at the input's original size, the (dilated) mask used, steps, seed."""

    image: Image.Image
    mask: np.ndarray
    steps: int
    seed: int
