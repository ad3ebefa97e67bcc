"""Putting a model's repainted region back into the full-size photo (numpy + PIL).

Both masked edits (ObjectClear, FLUX inpainting) run their model at a working size and
must give back the input's own pixels wherever they did not repaint. `feathered` turns a
region into blend weights that are exactly 0 beyond a short feather; `composite` blends
the working-size picture over the input inside the weights' box only, and returns an
`edits.Edit` - nothing outside the box is read, resampled or copied, so the cost follows
the region, not the photo.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mic2e_services.edits import Box, Edit

__all__ = ["composite", "feathered"]


def feathered(mask: np.ndarray, feather: int) -> tuple[np.ndarray, Box]:
    """Blend weights in [0, 1], and the box they cover: 1 on `mask`, falling to 0 over
    `feather` pixels outside it along rows and columns (up to 1.4x that on diagonals),
    exactly 0 beyond: the mask grown by half the feather (a square), then a box blur over
    the rest, which has no tail. Only the box around the mask is computed, in 1-D passes
    of running sums, so the cost follows the mask's area and not the image's or the
    feather's; on the CPU (the mask and the weights are numpy arrays either side, and
    float64 keeps a window of zeros at exactly 0). The weights stop at the array's
    edges."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    grow, blur = feather // 2, feather - feather // 2
    # Wide enough that the blur never reaches a crop edge inside the image, where it
    # would divide by fewer pixels than the whole image's blur does.
    margin = feather + blur + 1
    box = (max(0, cols[0] - margin), max(0, rows[0] - margin),
           min(w, cols[-1] + 1 + margin), min(h, rows[-1] + 1 + margin))
    crop = mask[box[1]:box[3], box[0]:box[2]] > 0
    alpha = crop.astype(np.float64)
    if feather > 0:
        # A square grown, then a box blur, each as two 1-D passes.
        for axis in (1, 0):
            if grow > 0:
                alpha = (_window_sums(alpha, grow, axis)[0] > 0).astype(np.float64)
        for axis in (1, 0):
            sums, counts = _window_sums(alpha, blur, axis)
            alpha = sums / counts
        alpha = np.maximum(alpha, crop)
    return alpha.astype(np.float32), tuple(int(v) for v in box)


def _window_sums(x: np.ndarray, radius: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of `x` over windows of 2 * radius + 1 along `axis`, clipped at the edges, and
    how many pixels each window holds there (running sums: O(1) a pixel)."""
    n = x.shape[axis]
    zero = np.zeros_like(x.take([0], axis=axis))
    running = np.concatenate([zero, np.cumsum(x, axis=axis)], axis=axis)  # sums of x[:i]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    # extended[j] = running[clip(j - radius, 0, n)]: the window's ends, clipped.
    extended = np.pad(running, pad, mode="edge")
    sums = (extended.take(range(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
            - extended.take(range(n), axis=axis))
    index = np.arange(n)
    counts = np.minimum(index + radius + 1, n) - np.maximum(index - radius, 0)
    shape = [1] * x.ndim
    shape[axis] = n
    return sums, counts.reshape(shape).astype(x.dtype)


def composite(image: Image.Image, painted: Image.Image, alpha: np.ndarray, box: Box, *,
              frame: Box | None = None,
              resample: Image.Resampling = Image.Resampling.LANCZOS) -> Edit:
    """`painted` (a picture of `frame` of `image`, the whole image by default, at any
    size) blended over `image` with weights `alpha` over `box` (inside `frame`), as an
    `Edit`: where alpha is 0, and outside the box, the result is the image's own pixels,
    unchanged. `painted` is resampled (`resample`) over the box only."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return Edit.of(image, box, np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), bool))
    fx0, fy0, fx1, fy1 = frame or (0, 0, image.width, image.height)
    sx, sy = painted.width / (fx1 - fx0), painted.height / (fy1 - fy0)
    top = np.asarray(_rgb(painted).resize(
        (x1 - x0, y1 - y0), resample,
        box=((x0 - fx0) * sx, (y0 - fy0) * sy, (x1 - fx0) * sx, (y1 - fy0) * sy)))
    # Blended by Pillow with the weights in 8 bits (one pass in C instead of four float32
    # numpy passes over the box; at most 1 level from the float blend): 0 keeps the
    # image's byte and 255 takes the painted one exactly.
    weights = Image.fromarray(np.rint(np.clip(alpha, 0.0, 1.0) * 255).astype(np.uint8))
    mixed = Image.composite(Image.fromarray(top), _rgb(image).crop(box), weights)
    return Edit.of(image, box, np.asarray(mixed), alpha > 0)


def _rgb(image: Image.Image) -> Image.Image:
    # convert() copies even when the mode is right: a whole 12 MP photo for nothing.
    return image if image.mode == "RGB" else image.convert("RGB")
