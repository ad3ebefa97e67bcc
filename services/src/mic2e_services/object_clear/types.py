"""The object-clear model's plain request and result (no torch, no protobuf).

Shared by the model (`model.py`) and the servicer's conversions (`convert.py`), so the
servicer never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True, eq=False)
class ClearQuery:
    """One removal request.

    mask: bool (H, W) at the image's size, all the caller's masks already merged.
    label: "" for the reference's prompt ("remove the instance of object"); a word puts
    the caller's label there instead (a departure from the reference). short_side: images
    whose short side is at least this are scaled down to it (the reference's 512); smaller
    ones run at their own size (`pipeline.working_size`). seed: None draws one (reported
    in the output). fusion: Attention-Guided Fusion. mask_dilation: grow the mask by this
    many pixels (a disk) first.
    """

    image: Image.Image
    mask: np.ndarray
    label: str = ""
    steps: int = 20
    guidance_scale: float = 2.5
    short_side: int = 512
    seed: int | None = None
    fusion: bool = True
    mask_dilation: int = 0


@dataclass(frozen=True, eq=False)
class ClearOutput:
    """The cleared image at the input's original size, the (dilated) mask used, steps, seed."""

    image: Image.Image
    mask: np.ndarray
    steps: int
    seed: int
