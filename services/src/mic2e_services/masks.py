"""Masks grown on the device, for every model that repaints a region (ObjectClear's
removal, FLUX's inpainting): a disk of a given radius, with pixels outside the image
counting as unset (OpenCV's default for dilation)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["binary_dilate", "dilate_mask", "dilated_array", "disk_kernel"]

#: Radius up to which `dilate_mask` convolves directly; above it an FFT is cheaper.
_DIRECT_DILATION_MAX_RADIUS = 16


def disk_kernel(radius: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The (2r+1, 2r+1) disk of pixels whose centres lie within `radius` of the centre."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius * radius).float()


def binary_dilate(mask: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Binary dilation of (B, 1, H, W) `mask` (nonzero = set) by an odd-sized 0/1 kernel.

    Pixels outside the image count as unset (OpenCV's default for dilation). Returns a
    float 0/1 mask of the same shape.
    """
    kh, kw = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {tuple(kernel.shape)}")
    weight = kernel.to(device=mask.device, dtype=torch.float32)[None, None]
    hits = F.conv2d((mask > 0).float(), weight, padding=(kh // 2, kw // 2))
    # Counts are small integers, exact in float32: > 0.5 means "any kernel pixel hit".
    return (hits > 0.5).float()


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a boolean mask by `radius` pixels (a disk), on the mask's device.

    Accepts (H, W) or (B, 1, H, W); returns a bool tensor of the same shape. Small radii
    convolve directly; large ones (up to a few hundred pixels on multi-megapixel images)
    go through an FFT in float64, whose rounding error stays far below the 0.5 threshold.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    squeeze = mask.ndim == 2
    m = (mask[None, None] if squeeze else mask) > 0
    if radius > 0:
        kernel = disk_kernel(radius, device=m.device)
        if radius <= _DIRECT_DILATION_MAX_RADIUS:
            m = binary_dilate(m, kernel) > 0.5
        else:
            m = _fft_dilate(m, kernel)
    return m[0, 0] if squeeze else m


def dilated_array(mask: np.ndarray, radius: int, device: torch.device | str) -> np.ndarray:
    """A numpy mask grown by `radius` pixels (a disk), computed on `device`: a new bool
    array, the input untouched (radius 0: the mask itself, as a contiguous bool array -
    a copy of a 12 MP mask is 12 MB to write for nothing). Only the mask's box grown by
    `radius` is dilated, so the cost follows the mask, not the image (a small object in
    a 12 MP photo)."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if radius <= 0:
        return mask
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    out = mask.copy()
    if rows.size == 0:
        return out
    h, w = mask.shape
    y0, y1 = max(0, rows[0] - radius), min(h, rows[-1] + 1 + radius)
    x0, x1 = max(0, cols[0] - radius), min(w, cols[-1] + 1 + radius)
    part = torch.from_numpy(mask[y0:y1, x0:x1].copy()).to(device)
    out[y0:y1, x0:x1] = dilate_mask(part, radius).cpu().numpy()
    return out


def _fft_dilate(mask: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Dilation as an FFT convolution (cost independent of the kernel size)."""
    _, _, h, w = mask.shape
    kh, kw = kernel.shape
    # Linear (not circular) convolution: pad to the full output size.
    fh, fw = h + kh - 1, w + kw - 1
    spectrum = torch.fft.rfft2(mask.double(), s=(fh, fw)) * torch.fft.rfft2(
        kernel.double(), s=(fh, fw)
    )
    full = torch.fft.irfft2(spectrum, s=(fh, fw))
    same = full[..., kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w]
    return same > 0.5
