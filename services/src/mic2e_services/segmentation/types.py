"""The segmentation model's plain requests, results and input checks.

No torch, no protobuf: shared by the model (`model.py`) and the servicer's conversions
(`convert.py`), so the servicer never imports torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from mic2e_services import errors

#: Longest accepted text prompt, in characters (SAM3 reads at most 32 tokens anyway).
MAX_TEXT_CHARS = 200

# --------------------------------------------------------------------------------------
# Requests and results: plain frozen dataclasses, no protobuf.


@dataclass(frozen=True)
class TextQuery:
    """Segment every instance of `text` in `image`."""

    image: PIL.Image.Image
    image_key: str  # SHA-256 of the encoded image: the vision-feature cache key
    text: str
    score_threshold: float = 0.3
    max_instances: int = 0  # 0: all instances above the threshold
    mask_threshold: float = 0.5


@dataclass(frozen=True)
class PromptQuery:
    """Segment the one object that the clicked points and/or the box designate.

    Points are ``(x, y, positive)`` in pixels of the image; the box is
    ``(x0, y0, x1, y1)`` in pixels.
    """

    image: PIL.Image.Image
    image_key: str
    points: tuple[tuple[float, float, bool], ...] = ()
    box: tuple[float, float, float, float] | None = None
    return_alternatives: bool = False


# eq=False: the numpy mask makes field-wise equality ambiguous.
@dataclass(frozen=True, eq=False)
class Segment:
    """One mask at the image's own size, its score and its tight box.

    `box` is ``(x0, y0, x1, y1)`` with x1 / y1 exclusive; ``(0, 0, 0, 0)`` for an empty mask.
    """

    mask: np.ndarray  # bool, (height, width)
    score: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class TextResult:
    instances: list[Segment]  # by score, highest first


@dataclass(frozen=True, eq=False)
class PromptResult:
    best: Segment
    alternatives: list[Segment] = field(default_factory=list)  # by score, highest first


Query = TextQuery | PromptQuery


# --------------------------------------------------------------------------------------
# Input checks: the one place that decides what a valid request is.


def _finite(*values: Any) -> bool:
    return all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values)


def _unpack(value: Any, size: int) -> tuple | None:
    """`value` as a tuple of `size` items, or None if it is not such a sequence."""
    try:
        items = tuple(value)
    except TypeError:
        return None
    return items if len(items) == size else None


def check_inputs(query: Any) -> None:
    """Raise `errors.InvalidArgument` naming the API field of the first bad value.

    Coordinates are continuous pixel positions: a point may lie anywhere in
    ``[0, width] x [0, height]``; a box must lie inside that and have positive area.
    """
    if not isinstance(query, TextQuery | PromptQuery):
        raise errors.InvalidArgument("request", f"unsupported request type {type(query).__name__}")
    image = query.image
    if not isinstance(image, PIL.Image.Image):
        raise errors.InvalidArgument("image", "not a decoded image")
    width, height = image.size
    if width < 1 or height < 1:
        raise errors.InvalidArgument("image", f"empty image ({width}x{height})")
    if not isinstance(query.image_key, str) or not query.image_key:
        raise errors.InvalidArgument("image", "missing image key (SHA-256)")

    if isinstance(query, TextQuery):
        text = query.text.strip() if isinstance(query.text, str) else ""
        if not text:
            raise errors.InvalidArgument("text", "must not be empty")
        if len(query.text) > MAX_TEXT_CHARS:
            raise errors.InvalidArgument(
                "text", f"{len(query.text)} characters; at most {MAX_TEXT_CHARS}"
            )
        if not _finite(query.score_threshold) or not 0.0 <= query.score_threshold <= 1.0:
            raise errors.InvalidArgument(
                "score_threshold", f"{query.score_threshold!r} is not in [0, 1]"
            )
        if not _finite(query.mask_threshold) or not 0.0 <= query.mask_threshold <= 1.0:
            raise errors.InvalidArgument(
                "mask_threshold", f"{query.mask_threshold!r} is not in [0, 1]"
            )
        if not isinstance(query.max_instances, int) or query.max_instances < 0:
            raise errors.InvalidArgument(
                "max_instances", f"{query.max_instances!r}; use 0 for all or a positive count"
            )
        return

    if not query.points and query.box is None:
        raise errors.InvalidArgument("points", "give at least one point or a box")
    for i, point in enumerate(query.points):
        items = _unpack(point, 3)
        if items is None or not _finite(items[0], items[1]):
            raise errors.InvalidArgument(f"points[{i}]", f"{point!r} is not (x, y, positive)")
        x, y, _ = items
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise errors.InvalidArgument(
                f"points[{i}]", f"({x}, {y}) is outside the {width}x{height} image"
            )
    if query.box is not None:
        box = _unpack(query.box, 4)
        if box is None or not _finite(*box):
            raise errors.InvalidArgument("box", f"{query.box!r} is not (x0, y0, x1, y1)")
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise errors.InvalidArgument("box", f"{box!r} has no area (need x0 < x1, y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise errors.InvalidArgument("box", f"{box!r} is outside the {width}x{height} image")
