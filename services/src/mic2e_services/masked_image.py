"""Checks of the decoded image and merged mask that a masked edit carries (ObjectClear's
Clear, FLUX's Inpaint): the one place that says what a usable pair is. No torch, no
protobuf."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from mic2e_services.errors import FieldViolation

__all__ = ["masked_image_violations", "with_masked_image"]


def masked_image_violations(image: Any, mask: Any) -> list[FieldViolation]:
    """What is wrong with `image` (a decoded, non-empty PIL image) and `mask` (one bool
    HxW array at its size selecting at least one pixel), named as in the API ("image",
    "masks"); an unusable image is the only violation reported."""
    if not isinstance(image, Image.Image) or image.width < 1 or image.height < 1:
        return [FieldViolation("image", "not a decodable, non-empty image")]
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        return [FieldViolation("masks", "expected one 2-D mask")]
    if mask.shape != (image.height, image.width):
        return [FieldViolation("masks", f"mask is {mask.shape[1]}x{mask.shape[0]} but the "
                                        f"image is {image.width}x{image.height}")]
    if not mask.any():
        return [FieldViolation("masks", "the mask selects no pixel")]
    return []


def with_masked_image(bad: list[FieldViolation], image: Any, mask: Any
                      ) -> tuple[list[FieldViolation], bool]:
    """`bad` (a request's other violations) with the pair's, and whether the image is
    usable: an unusable image is reported first, and checks that read the image's size
    must not run."""
    pair = masked_image_violations(image, mask)
    if pair and pair[0].field == "image":
        return [*pair, *bad], False
    return [*bad, *pair], True
