"""SAM3's per-image vision features kept on the device (`FeatureCache`), and its masks
brought to full size (`segments`): torch only, for `model.Sam3Segmenter`."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mic2e_services.api.segmentation import Segment

# Upsampling every candidate to full resolution at once can take gigabytes for large
# images (200 queries x 12 Mpx x 4 bytes); masks are upsampled in chunks of this many
# pixels in total.
_UPSAMPLE_BUDGET_PIXELS = 64 * 1024 * 1024


@dataclass
class Features:
    """What is known about one image on the device.

    `backbone` maps a backbone slot ("shared", or "detector" / "tracker" when the two
    models do not share one) to its output, and is dropped once both paths have their
    neck features. Neck features are batch-1 tensors, concatenated per call.
    """

    size: tuple[int, int]  # (width, height): guards against a key reused for another image
    backbone: dict[str, torch.Tensor] = field(default_factory=dict)
    detector: list[torch.Tensor] | None = None  # FPN levels for Sam3Model
    tracker: list[torch.Tensor] | None = None  # image_embeddings for Sam3TrackerModel

    def nbytes(self) -> int:
        tensors = [*self.backbone.values(), *(self.detector or ()), *(self.tracker or ())]
        return sum(t.numel() * t.element_size() for t in tensors)


class FeatureCache:
    """Features by image key, least recently used first out, at most `max_bytes` of device
    memory in all; thread-safe (the worker's thread writes, metrics read)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Features] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def bytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes() for entry in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def lookup(self, key: str, size: tuple[int, int]) -> Features:
        """The image's entry (fresh if absent or stale), made the most recent."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.size != size:
                entry = Features(size=size)
                self._entries[key] = entry
            self._entries.move_to_end(key)
        return entry

    def trim(self) -> None:
        """Drop the least recently used features until the cache fits its budget (a call's
        own entries stay in its hands until it is done with them)."""
        with self._lock:
            held = sum(entry.nbytes() for entry in self._entries.values())
            while held > self.max_bytes:
                held -= self._entries.popitem(last=False)[1].nbytes()


def _spatial(hidden: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, C) -> (batch, C, h, w), as Sam3VisionModel.forward reshapes it."""
    side = math.isqrt(hidden.shape[1])  # the image processor always makes square inputs
    return hidden.view(hidden.shape[0], side, side, -1).permute(0, 3, 1, 2)


def detector_levels(detector: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sam3Model's FPN levels from the backbone's output."""
    fpn, _ = detector.vision_encoder.neck(_spatial(hidden))
    return tuple(fpn)


def tracker_embeddings(tracker: Any, hidden: torch.Tensor) -> list[torch.Tensor]:
    """The tracker's image embeddings (as get_image_embeddings makes them) from the backbone.

    The no-memory embedding goes on the lowest-resolution level the mask decoder
    reads, as in the original SAM 3 and transformers' Sam3TrackerVideoModel.
    transformers' Sam3TrackerModel (5.x) adds it to the extra 0.5x neck level and then
    drops that level, i.e. decodes single images as if the learned embedding were
    zero; the video model's order is followed here (a test pins it). With a 3-level
    neck, or a zero embedding, the two agree exactly.
    """
    fpn, _ = tracker.vision_encoder.neck(_spatial(hidden))
    levels = list(fpn)[: len(tracker.backbone_feature_sizes)]
    # Pre-projected once per image instead of on every click, as transformers does.
    levels[0] = tracker.mask_decoder.conv_s0(levels[0])
    levels[1] = tracker.mask_decoder.conv_s1(levels[1])
    levels[-1] = levels[-1] + tracker.no_memory_embedding.reshape(1, -1, 1, 1)
    return levels


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when both modules hold identical tensors under identical names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k])
        for k in sa
    )


def full_size_segments(
    low_res: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float,
) -> list[Segment]:
    """Low-resolution maps (n, h, w) -> full-size bool masks with tight boxes.

    Upsampling, thresholding and box finding stay on the device; only the bool masks
    and a few integers cross to the host.
    """
    width, height = image_size
    count = low_res.shape[0]
    if count == 0:
        return []
    per_chunk = max(1, _UPSAMPLE_BUDGET_PIXELS // (width * height))
    masks, boxes = [], []
    for start in range(0, count, per_chunk):
        maps = low_res[start : start + per_chunk]
        full = F.interpolate(
            maps[:, None], size=(height, width), mode="bilinear", align_corners=False
        )[:, 0]
        binary = full > threshold
        rows = binary.any(dim=2).to(torch.uint8)  # (n, height)
        cols = binary.any(dim=1).to(torch.uint8)  # (n, width)
        # argmax returns the first maximum: the first row / column holding the object.
        y0 = rows.argmax(dim=1)
        y1 = height - rows.flip(1).argmax(dim=1)
        x0 = cols.argmax(dim=1)
        x1 = width - cols.flip(1).argmax(dim=1)
        empty = rows.amax(dim=1) == 0
        box = torch.stack([x0, y0, x1, y1], dim=1).masked_fill(empty[:, None], 0)
        masks.append(binary.cpu().numpy())
        boxes.append(box.cpu().tolist())
    all_masks = np.concatenate(masks)
    all_boxes = [b for chunk in boxes for b in chunk]
    all_scores = scores.float().cpu().tolist()
    return [
        Segment(mask=all_masks[i], score=float(all_scores[i]), box=tuple(map(int, all_boxes[i])))
        for i in range(count)
    ]
