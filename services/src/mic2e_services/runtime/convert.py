"""Protobuf <-> plain-value conversions shared by the servicers (no torch here).

Each service's own `convert.py` builds on these; model code never sees a protobuf.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from google.protobuf import duration_pb2
from mic2e import codecs
from mic2e.v1 import common_pb2
from PIL import Image

from mic2e_services.edits import Edit
from mic2e_services.errors import InvalidArgument
from mic2e_services.runtime.images import ImageStore, StoredImage
from mic2e_services.runtime.worker import ProgressEvent
from mic2e_services.schema import MASKS, raise_if

_IMAGE_FORMATS = {
    common_pb2.IMAGE_FORMAT_UNSPECIFIED: "png",
    common_pb2.IMAGE_FORMAT_PNG: "png",
    common_pb2.IMAGE_FORMAT_JPEG: "jpeg",
    common_pb2.IMAGE_FORMAT_WEBP: "webp",
}
_FORMAT_ENUM = {"png": common_pb2.IMAGE_FORMAT_PNG, "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
                "webp": common_pb2.IMAGE_FORMAT_WEBP}


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


async def image_from_proto(store: ImageStore, image: common_pb2.Image, field: str = "image"
                           ) -> StoredImage:
    """Resolve an `Image` (bytes or reference) through the server's store."""
    source = image.WhichOneof("source")
    if source == "data":
        return await store.resolve(image.data, None, field)
    if source == "sha256":
        return await store.resolve(None, image.sha256, field)
    raise InvalidArgument(field, "an image is required (data or sha256)")


def image_format(value: int, field: str) -> str:
    """An `ImageFormat` enum value -> codec name; unknown values name the field."""
    try:
        return _IMAGE_FORMATS[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown image format {value}") from None


def encoded_image(img: Image.Image, fmt: str, icc_profile: bytes | None = None
                  ) -> common_pb2.EncodedImage:
    data = codecs.encode_image(img, fmt, icc_profile=icc_profile)
    return common_pb2.EncodedImage(data=data, format=_FORMAT_ENUM[fmt], width=img.width,
                                   height=img.height, sha256=codecs.sha256_hex(data))


def edit_result(edit: Edit, fmt: str, *, patch: bool, region_mask: bool, base_sha256: str
                ) -> dict[str, Any]:
    """The result fields of an edit: `image` (the whole picture) or, when the caller asked
    for one, `patch` (the changed part, in lossless WebP: the fastest lossless encoder
    measured, and smaller than PNG; PNG past WebP's largest side), the repainted box,
    and the repainted region as a mask when asked. Every image carries the input's ICC
    profile."""
    x0, y0, x1, y1 = edit.box
    out: dict[str, Any] = {"repainted_box": common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1)}
    if patch:
        pixels = edit.patch()
        out["patch"] = common_pb2.ImagePatch(
            image=encoded_image(pixels, "webp" if max(pixels.size) <= codecs.WEBP_MAX_SIDE
                                else "png", edit.icc_profile),
            x=x0, y=y0, full_width=edit.base.width, full_height=edit.base.height,
            base_sha256=base_sha256)
    else:
        out["image"] = encoded_image(edit.image, fmt, edit.icc_profile)
    if region_mask:
        out["repainted_mask"] = mask_to_proto(edit.region(), "png")
    return out


def edit_message(out: Any, fmt: str, options: Any, image: StoredImage,
                 provenance: common_pb2.Provenance) -> dict[str, Any]:
    """The fields of a masked edit's result message (ClearResult, InpaintResult) from the
    model's output (`edit`, `mask`, `timings`): the picture as `options.output_patch`
    asks, the repainted box and mask, the mask used, and the provenance with the seconds
    of the work around the model appended (decode, prepare, composite, encode)."""
    started = time.perf_counter()
    fields = edit_result(out.edit, fmt, patch=options.output_patch,
                         region_mask=options.output_repainted_mask, base_sha256=image.sha256)
    fields["mask"] = mask_to_proto(out.mask, "png")
    provenance.timings.extend(
        common_pb2.StageTiming(stage=s, duration=duration(t)) for s, t in
        {"decode": image.decode_s, **out.timings,
         "encode": time.perf_counter() - started}.items())
    return {**fields, "provenance": provenance}


def mask_format(value: int, field: str) -> str:
    if value in (common_pb2.MASK_FORMAT_UNSPECIFIED, common_pb2.MASK_FORMAT_PNG):
        return "png"
    if value == common_pb2.MASK_FORMAT_RLE:
        return "rle"
    raise InvalidArgument(field, f"unknown mask format {value}")


def mask_to_proto(mask: np.ndarray, fmt: str) -> common_pb2.Mask:
    h, w = mask.shape
    if fmt == "rle":
        return common_pb2.Mask(width=w, height=h,
                               rle=common_pb2.Rle(counts=codecs.rle_encode(mask)))
    return common_pb2.Mask(width=w, height=h, png=codecs.encode_mask_png(mask))


def mask_from_proto(mask: common_pb2.Mask, field: str, *, size: tuple[int, int],
                    max_pixels: int = codecs.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A `Mask` -> bool HxW. Its declared size must be the image's `size` (width, height)
    and its data must hold exactly that: both checked before a pixel is decoded."""
    width, height = size
    if (mask.width, mask.height) != (width, height):
        raise InvalidArgument(
            field, f"mask is {mask.width}x{mask.height}, the image is {width}x{height}")
    encoding = mask.WhichOneof("encoding")
    try:
        if encoding == "png":
            return codecs.decode_mask_png(mask.png, max_pixels=max_pixels, size=size)
        if encoding == "rle":
            return codecs.rle_decode(list(mask.rle.counts), width, height)
    except codecs.CodecError as exc:
        raise InvalidArgument(field, str(exc)) from None
    raise InvalidArgument(field, "a mask needs png or rle data")


def check_mask_count(masks: Sequence[common_pb2.Mask]) -> None:
    """Refuse a wrong number of masks before the image or any mask is decoded."""
    raise_if(MASKS.violations(masks))


def merged_masks_from_proto(masks: Sequence[common_pb2.Mask], field: str, *,
                            size: tuple[int, int], max_pixels: int = codecs.DEFAULT_MAX_PIXELS
                            ) -> np.ndarray:
    """The union of `masks` (at least one), decoded one at a time: two masks in memory at
    most, however many were sent."""
    merged: np.ndarray | None = None
    for i, m in enumerate(masks):
        arr = mask_from_proto(m, f"{field}[{i}]", size=size, max_pixels=max_pixels)
        merged = arr if merged is None else np.logical_or(merged, arr, out=merged)
    if merged is None:
        raise InvalidArgument(field, "at least one is required")
    return merged


def instance_to_proto(mask: np.ndarray, score: float, box: Sequence[float], fmt: str
                      ) -> common_pb2.Instance:
    x0, y0, x1, y1 = box
    return common_pb2.Instance(mask=mask_to_proto(mask, fmt), score=float(score),
                               box=common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1))


def progress_to_proto(event: ProgressEvent) -> common_pb2.Progress:
    return common_pb2.Progress(stage=event.stage, step=event.step, total_steps=event.total,
                               elapsed=duration(event.elapsed_s))


def provenance(*, server: str, model_id: str, revision: str, dtype: str, device: str,
               steps: int = 0, seed: int = 0, timings: Iterable[tuple[str, float]] = ()
               ) -> common_pb2.Provenance:
    return common_pb2.Provenance(
        model_id=model_id, revision=revision, dtype=dtype, steps=steps, seed=seed,
        device=device, server=server,
        timings=[common_pb2.StageTiming(stage=s, duration=duration(t)) for s, t in timings])


def given(message: object, names: Iterable[str]) -> dict[str, object]:
    """The fields among `names` the caller set (an `optional` field: only when present; a
    plain one: always, its zero value included), by name."""
    fields = message.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
    return {name: getattr(message, name) for name in names
            if not fields[name].has_presence or message.HasField(name)}  # type: ignore[attr-defined]
