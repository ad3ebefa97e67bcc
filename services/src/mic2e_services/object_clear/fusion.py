"""Attention-Guided Fusion in pixel space, in pure torch.

Everything runs on the device of its inputs (the GPU in production): no NumPy, OpenCV or
SciPy, no host syncs. The reference ObjectClear does the fusion with OpenCV and SciPy on
8-bit pictures on the CPU; the operations here are the same ones, including where the
reference truncates to 8 bits, so that the pictures match:

- OpenCV's elliptic structuring element and dilation (outside pixels never count);
- OpenCV's Gaussian blur with its default reflect-101 border;
- the binomial wavelet blur with edge replication, and SciPy's ``zoom(order=1)`` for the
  pyramid's shrink and enlarge (linear, corners aligned);
- ``astype(uint8)`` (truncation) where the reference converts to 8 bits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mic2e_services.masks import binary_dilate

__all__ = [
    "attention_guided_fusion",
    "ellipse_kernel",
    "fusion_masks",
    "gaussian_blur",
    "wavelet_color_fix",
    "wavelet_decompose",
]

def ellipse_kernel(size: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The (size, size) elliptic structuring element, as OpenCV's MORPH_ELLIPSE draws it.

    Row ``dy`` (from the centre) spans ``round(c * sqrt(1 - dy² / r²))`` pixels either side
    of the centre column, with ``r = c = size // 2``; rounding is half-to-even like cvRound.
    """
    if size < 1:
        raise ValueError(f"kernel size must be >= 1, got {size}")
    r = c = size // 2
    kernel = torch.zeros(size, size, dtype=torch.float32)
    if r == 0:
        kernel.fill_(1.0)
        return kernel.to(device)
    for row in range(size):
        dy = row - r
        dx = round(c * math.sqrt((r * r - dy * dy) / (r * r)))
        kernel[row, max(c - dx, 0) : min(c + dx + 1, size)] = 1.0
    return kernel.to(device)


def gaussian_blur(x: torch.Tensor, ksize: int = 9, sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect-101 borders (OpenCV's default).

    The kernel is computed in float64 and rounded to the input's dtype, as OpenCV's
    getGaussianKernel does for float pictures.
    """
    half = ksize // 2
    offsets = torch.arange(ksize, dtype=torch.float64, device=x.device) - half
    g = torch.exp(-(offsets**2) / (2.0 * sigma * sigma))
    g = (g / g.sum()).to(x.dtype)
    channels = x.shape[1]
    # "reflect" pads need a dimension larger than the pad; tiny inputs fall back to edges.
    mode = "reflect" if min(x.shape[-2:]) > half else "replicate"
    out = F.pad(x, (half, half, half, half), mode=mode)
    out = F.conv2d(out, g.view(1, 1, 1, ksize).expand(channels, 1, 1, ksize), groups=channels)
    out = F.conv2d(out, g.view(1, 1, ksize, 1).expand(channels, 1, ksize, 1), groups=channels)
    return out


def _binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 [1, 2, 1] x [1, 2, 1] / 16 blur with edge replication."""
    channels = x.shape[1]
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    out = F.pad(x, (1, 1, 1, 1), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, 3).expand(channels, 1, 1, 3), groups=channels)
    return F.conv2d(out, k.view(1, 1, 3, 1).expand(channels, 1, 3, 1), groups=channels)


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (B, C, H, W) into (high, low) frequencies with `levels` wavelet levels.

    Level i blurs the running low band with the binomial kernel and, for i > 0, shrinks it
    by 2**i and enlarges it back with linear interpolation whose corners align, as
    ``scipy.ndimage.zoom(order=1)`` does (the small size rounded as zoom rounds it). The
    residual goes to the high band; ``high + low == x`` up to rounding.
    """
    h, w = x.shape[-2:]
    low = x
    high = torch.zeros_like(x)
    for i in range(levels):
        blurred = _binomial_blur(low)
        if i > 0:
            small = (max(1, round(h / 2**i)), max(1, round(w / 2**i)))
            blurred = _zoom_linear(_zoom_linear(blurred, small), (h, w))
        high = high + (low - blurred)
        low = blurred
    return high, low


def _zoom_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) resized as ``scipy.ndimage.zoom(order=1)`` resizes it.

    Linear with corners aligned; and, as zoom's default ``mode="constant"`` does, a sample
    whose float64 coordinate ``k * (n - 1) / (m - 1)`` lands beyond the last input pixel
    gets 0: that happens to the last row or column at some sizes (240 -> 120 -> 240 is
    fine, 320 -> 160 zeroes the last column), and the reference's pictures carry it.
    """
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    rows = _beyond_edge(x.shape[-2], size[0])
    cols = _beyond_edge(x.shape[-1], size[1])
    if rows or cols:
        out[..., rows, :] = 0.0
        out[..., :, cols] = 0.0
    return out


def _beyond_edge(n: int, m: int) -> list[int]:
    """Output indices of an n -> m zoom whose coordinate exceeds n - 1 (Python floats are
    float64, as SciPy's coordinates)."""
    if m < 2:
        return []
    step = (n - 1) / (m - 1)
    return [k for k in range(m - 1, 0, -1) if k * step > n - 1]


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """`content`'s high frequencies (detail) with `style`'s low frequencies (colour)."""
    content_high, _ = wavelet_decompose(content, levels)
    _, style_low = wavelet_decompose(style, levels)
    return content_high + style_low


def fusion_masks(
    attention_map: torch.Tensor,
    size: tuple[int, int],
    *,
    threshold: int = 128,
    dilation: int = 21,
    blur_ksize: int = 9,
    blur_sigma: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard, soft) float masks (B, 1, H, W) at `size` from a (B, 1, h, w) map in [0, 1].

    hard: the map in 8 bits (``uint8(255 * a)``, truncated) kept where above `threshold`,
    enlarged with nearest neighbours. soft: hard dilated with an elliptic kernel and
    Gaussian-blurred, then ``max(hard, that)``: 1 on the hard mask, feathered around it.
    """
    levels = (attention_map.float() * 255.0).to(torch.uint8)
    hard = F.interpolate((levels > threshold).float(), size=size, mode="nearest")
    dilated = binary_dilate(hard, ellipse_kernel(dilation, device=hard.device))
    soft = torch.maximum(hard, gaussian_blur(dilated, blur_ksize, blur_sigma)).clamp(0.0, 1.0)
    return hard, soft


def attention_guided_fusion(
    original: torch.Tensor,
    generated: torch.Tensor,
    attention_map: torch.Tensor,
    *,
    levels: int = 5,
    masks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Keep the generated pixels where the model attended to the object, the original's
    detail (with the generated image's colour) elsewhere.

    `original`, `generated`: (B, 3, H, W) uint8 at the same (working) size;
    `attention_map`: (B, 1, h, w) in [0, 1]. Returns (B, 3, H, W) uint8. Both pictures are
    zeroed inside the hard mask before the wavelet colour fix (so the removed object does
    not bleed into the background's low frequencies), the fixed background is truncated to
    8 bits, and the soft mask blends it with the generated picture, truncated again.
    `masks`: `fusion_masks`' (hard, soft) of this map, when the caller has them already.
    """
    hard, soft = masks or fusion_masks(attention_map, tuple(original.shape[-2:]))
    keep = 1.0 - hard
    generated_f = generated.float()
    background = wavelet_color_fix(original.float() * keep / 255.0,
                                   generated_f * keep / 255.0, levels)
    background = (background * 255.0).clamp(0.0, 255.0).to(torch.uint8)
    fused = background.float() * (1.0 - soft) + generated_f * soft
    return fused.to(torch.uint8)
