"""Mask helpers shared by tests."""

from __future__ import annotations

import numpy as np


def within(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Every pixel within `pixels` (a square, so a superset of any disk) of `mask`."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            shifted = np.zeros_like(mask)
            shifted[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
            out |= shifted
    return out
