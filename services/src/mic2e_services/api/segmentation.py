"""The segmentation model's plain requests and results, and their fields' one declaration.

No torch, no protobuf: shared by the model (`model.py`), the servicer's conversions
(`convert.py`) and the orchestrator, so the servicer never imports torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from mic2e_services.errors import FieldViolation
from mic2e_services.schema import Field, Request

#: Stage name of its progress events and timings (the servicer's and the orchestrator's).
STAGE = "segmentation"

# SAM3 reads at most 32 text tokens; random tiny weights score ~0.25, so tests pass their
# own threshold.
TEXT = Field("text", str, required=True, max_chars=200)
SCORE_THRESHOLD = Field("score_threshold", float, 0.3, lo=0.0, hi=1.0)
MAX_INSTANCES = Field("max_instances", int, 0, lo=0)
SEGMENT_BY_TEXT = Request("SegmentByTextRequest", {
    "text": TEXT, "score_threshold": SCORE_THRESHOLD, "max_instances": MAX_INSTANCES})
# SAM's prompt encoder takes any number of points; a person clicks a handful.
POINTS = Field("points", list, max_items=64)
SEGMENT_BY_PROMPT = Request("SegmentByPromptRequest", {"points": POINTS})
#: SAM3's input side (its processor resizes every picture to 1008x1008): a JPEG decoded at
#: a reduced scale that keeps both sides at least this loses nothing the model sees.
MODEL_INPUT_SIDE = 1008
#: Vision features of recent images kept on the device for re-queries, MiB (the server's
#: MIC2E_FEATURE_CACHE_MB default; sized with the 1.7 GB model for a 4 GB card).
FEATURE_CACHE_MB = 512
#: Where a mask probability counts as the object (not an API field: SAM3's own).
MASK_THRESHOLD = 0.5

# --------------------------------------------------------------------------------------
# Requests and results: plain frozen dataclasses, no protobuf.


@dataclass(frozen=True)
class TextQuery:
    """Segment every instance of `text` in `image`."""

    image: PIL.Image.Image
    image_key: str  # SHA-256 of the encoded image: the vision-feature cache key
    text: str
    score_threshold: float = SCORE_THRESHOLD.default
    max_instances: int = MAX_INSTANCES.default  # 0: all instances above the threshold
    mask_threshold: float = MASK_THRESHOLD
    #: The picture's own (width, height) when `image` was decoded smaller; masks come
    #: back at this size.
    original_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the picture: masks and coordinates are at this size."""
        return self.original_size or self.image.size


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
    #: As `TextQuery.original_size`: points, box and masks are at this size.
    original_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the picture: masks and coordinates are at this size."""
        return self.original_size or self.image.size


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


def violations(query: Any) -> list[FieldViolation]:
    """Every bad field of `query`, named as in the API.

    Coordinates are continuous pixel positions: a point lies on a pixel of the image,
    ``[0, width) x [0, height)``; a box lies inside ``[0, width] x [0, height]`` (its
    right and bottom edges are exclusive) and has positive area.
    """
    if not isinstance(query, TextQuery | PromptQuery):
        return [FieldViolation("request", f"unsupported request type {type(query).__name__}")]
    image = query.image
    if not isinstance(image, PIL.Image.Image) or image.width < 1 or image.height < 1:
        return [FieldViolation("image", "not a decoded, non-empty image")]
    bad = []
    if not isinstance(query.image_key, str) or not query.image_key:
        bad.append(FieldViolation("image", "missing image key (SHA-256)"))
    if isinstance(query, TextQuery):
        return bad + SEGMENT_BY_TEXT.check(query)

    width, height = query.size
    if too_many := SEGMENT_BY_PROMPT.check(query):
        return bad + too_many  # not one item more is looked at
    if not query.points and query.box is None:
        bad.append(FieldViolation("points", "give at least one point or a box"))
    for i, point in enumerate(query.points):
        items = _unpack(point, 3)
        if items is None or not _finite(items[0], items[1]):
            bad.append(FieldViolation(f"points[{i}]", f"{point!r} is not (x, y, positive)"))
        elif not (0.0 <= items[0] < width and 0.0 <= items[1] < height):
            bad.append(FieldViolation(f"points[{i}]", f"({items[0]}, {items[1]}) is outside "
                                                      f"the {width}x{height} image"))
    if query.box is not None:
        bad += box_violations(query.box, (width, height))
    return bad


def box_violations(box: Any, size: tuple[int, int] | None = None, field: str = "box"
                   ) -> list[FieldViolation]:
    """What is wrong with `box` (x0, y0, x1, y1 in pixels): not four finite numbers, no
    area, or - given the image's (width, height) - outside the image. Also the
    orchestrator's check of a box target, before and after it reads the image's size."""
    items = _unpack(box, 4)
    if items is None or not _finite(*items):
        return [FieldViolation(field, f"{box!r} is not (x0, y0, x1, y1)")]
    x0, y0, x1, y1 = items
    if x1 <= x0 or y1 <= y0:
        return [FieldViolation(field, f"{items!r} has no area (need x0 < x1, y0 < y1)")]
    if size is not None and (x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]):
        return [FieldViolation(field, f"{items!r} is outside the {size[0]}x{size[1]} image")]
    return []
