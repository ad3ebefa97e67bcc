"""Plain result types of the mic2e client: PIL images, numpy masks, dataclasses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mic2e import codecs

#: An axis-aligned box (x0, y0, x1, y1) in pixels; x1/y1 exclusive.
BoxT = tuple[float, float, float, float]


@dataclass(frozen=True)
class Point:
    """A click at (x, y) in image pixels; `positive` False marks background."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Progress:
    """A progress event of a streamed call."""

    stage: str
    step: int
    total_steps: int
    elapsed_s: float


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: model, revision, dtype, device, steps, seed, timings."""

    server: str
    model_id: str
    revision: str
    dtype: str
    device: str
    steps: int
    seed: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """One segmented object: a boolean mask at the image's size, its score and box."""

    mask: np.ndarray
    score: float
    box: BoxT


@dataclass(frozen=True)
class TextSegmentation:
    """Result of `segment_by_text`: instances sorted by score, best first."""

    instances: list[Instance]
    width: int
    height: int
    image_sha256: str
    provenance: Provenance


@dataclass(frozen=True)
class PromptSegmentation:
    """Result of `segment_by_prompt`: the best mask and, if asked, the alternatives."""

    best: Instance
    alternatives: list[Instance]
    width: int
    height: int
    image_sha256: str
    provenance: Provenance


@dataclass(frozen=True)
class Segmented:
    """Event of `remove_objects` / `replace_objects`: the instances that will be removed
    or repainted."""

    instances: list[Instance]
    provenance: Provenance


class _Picture:
    """What every edit's result can do with its whole picture."""

    image: Image.Image
    data: bytes | None

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole picture in the format `path`'s extension names (.png, .jpg /
        .jpeg, .webp) with the input's colour profile (PIL's own `save` drops it from JPEG
        and WebP): the server's bytes when they are already that, else encoded here."""
        fmt = codecs.format_of(str(path))
        data = self.data
        if data is None or codecs.EXTENSIONS.get(f".{self.image.format or ''}".lower()) != fmt:
            data = codecs.encode_image(self.image, fmt)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)


@dataclass(frozen=True)
class Patch:
    """The changed part of an edited picture, as the server sent it (`ImagePatch`): an
    RGBA image (PNG or WebP) to put at (x, y) of the input; alpha 255 marks the result's
    pixels. The client has applied it already (the result's `image`)."""

    x: int
    y: int
    data: bytes


@dataclass(frozen=True)
class ClearResult(_Picture):
    """Final event of `clear`: the edited image (whole, at the input's size) and the mask
    used."""

    image: Image.Image
    mask: np.ndarray
    provenance: Provenance
    #: The server's encoded whole picture; None when it came as a patch (`patch`).
    data: bytes | None
    #: The changed part as it came over the wire, when the client asked for a patch.
    patch: Patch | None = None
    #: The box of the repainted region (x0, y0, x1, y1): every pixel outside it is the
    #: input's own.
    repainted_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: The repainted region at the image's size, when asked (`repainted_mask=True`).
    repainted_mask: np.ndarray | None = None


@dataclass(frozen=True)
class GenerateResult(_Picture):
    """Final event of `generate`."""

    image: Image.Image
    provenance: Provenance
    prompt_truncated: bool
    truncated_prompt: str
    data: bytes


@dataclass(frozen=True)
class RemoveResult(_Picture):
    """Final event of `remove_objects`: image, merged mask, instances, per-stage facts."""

    image: Image.Image
    mask: np.ndarray
    instances: list[Instance]
    stages: list[Provenance]
    timings: dict[str, float]
    #: The server's encoded whole picture; None when it came as a patch (`patch`).
    data: bytes | None
    #: The changed part as it came over the wire, when the client asked for a patch.
    patch: Patch | None = None
    #: The box of the repainted region (x0, y0, x1, y1): every pixel outside it is the
    #: input's own.
    repainted_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: The repainted region at the image's size, when asked (`repainted_mask=True`).
    repainted_mask: np.ndarray | None = None


@dataclass(frozen=True)
class InpaintResult(_Picture):
    """Final event of `inpaint`: the image at the input's size (the input's own pixels
    outside the dilated, feathered mask) and the mask repainted."""

    image: Image.Image
    mask: np.ndarray
    provenance: Provenance
    prompt_truncated: bool
    truncated_prompt: str
    #: The server's encoded whole picture; None when it came as a patch (`patch`).
    data: bytes | None
    #: The changed part as it came over the wire, when the client asked for a patch.
    patch: Patch | None = None
    #: The box of the repainted region (x0, y0, x1, y1): every pixel outside it is the
    #: input's own.
    repainted_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: The repainted region at the image's size, when asked (`repainted_mask=True`).
    repainted_mask: np.ndarray | None = None


@dataclass(frozen=True)
class ReplaceResult(_Picture):
    """Final event of `replace_objects` / `fill`: image, repainted mask, instances (none
    for a mask or box target), per-stage facts."""

    image: Image.Image
    mask: np.ndarray
    instances: list[Instance]
    stages: list[Provenance]
    timings: dict[str, float]
    prompt_truncated: bool
    truncated_prompt: str
    #: The server's encoded whole picture; None when it came as a patch (`patch`).
    data: bytes | None
    #: The changed part as it came over the wire, when the client asked for a patch.
    patch: Patch | None = None
    #: The box of the repainted region (x0, y0, x1, y1): every pixel outside it is the
    #: input's own.
    repainted_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: The repainted region at the image's size, when asked (`repainted_mask=True`).
    repainted_mask: np.ndarray | None = None
