"""Requests of the typed clients, built from their keyword arguments (internal): each
checks its arguments where it is built, and a composed request is built once per call."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from mic2e import _convert as cv
from mic2e.types import BoxT, Point
from mic2e.v1 import common_pb2, flux_pb2, object_clear_pb2, orchestrator_pb2, segmentation_pb2

M = TypeVar("M", orchestrator_pb2.RemoveObjectsRequest, orchestrator_pb2.ReplaceObjectsRequest)


def text_request(image: common_pb2.Image, text: str, score_threshold: float | None,
                  max_instances: int, mask_format: str) -> segmentation_pb2.SegmentByTextRequest:
    req = segmentation_pb2.SegmentByTextRequest(
        image=image, text=text, max_instances=max_instances,
        mask_format=common_pb2.MASK_FORMAT_RLE if mask_format == "rle"
        else common_pb2.MASK_FORMAT_PNG)
    if score_threshold is not None:
        req.score_threshold = score_threshold
    return req


def prompt_request(image: common_pb2.Image, points: Iterable[Point | tuple], box: BoxT | None,
                    return_alternatives: bool) -> segmentation_pb2.SegmentByPromptRequest:
    return segmentation_pb2.SegmentByPromptRequest(
        image=image, points=cv.points_proto(points), box=cv.box_proto(box),
        return_alternatives=return_alternatives)


def generate_request(prompt: str, width: int | None, height: int | None, steps: int | None,
                      seed: int | None, output_format: str) -> flux_pb2.GenerateRequest:
    req = flux_pb2.GenerateRequest(prompt=prompt, output_format=cv.output_format(output_format))
    for name, value in (("width", width), ("height", height), ("steps", steps), ("seed", seed)):
        if value is not None:
            setattr(req, name, value)
    return req


def _picture_options(options: dict[str, Any], patches: bool) -> dict[str, Any]:
    """The options every edit takes about its picture: the output format, a patch (when
    the client applies patches), the repainted mask (`repainted_mask=True`)."""
    return {"output_format": cv.output_format(options.pop("output_format", None) or "png"),
            "output_patch": patches,
            "output_repainted_mask": bool(options.pop("repainted_mask", False))}


def clear_options(options: dict[str, Any], patches: bool = False
                   ) -> object_clear_pb2.ClearOptions:
    """Keyword options -> ClearOptions (None means the server default)."""
    opts = object_clear_pb2.ClearOptions(
        mask_dilation=options.pop("mask_dilation", 0) or 0,
        **_picture_options(options, patches))
    if options.get("strategy") is not None:
        options["strategy"] = cv.strategy(options["strategy"])
    for name, value in options.items():
        if value is not None:
            setattr(opts, name, value)
    return opts


def remove_request(image: common_pb2.Image, text: str | None, points: Sequence, box: BoxT | None,
                    masks: Sequence[cv.MaskInput], min_score: float | None, max_instances: int,
                    mask_dilation: int | None, label: str, options: dict[str, Any],
                    patches: bool) -> orchestrator_pb2.RemoveObjectsRequest:
    req = orchestrator_pb2.RemoveObjectsRequest(
        image=image, label=label, clear_options=clear_options(dict(options), patches))
    _set_target(req, text, points, box, masks, None, min_score, max_instances)
    if mask_dilation is not None:
        req.mask_dilation = mask_dilation
    return req


def inpaint_options(options: dict[str, Any], patches: bool = False
                     ) -> flux_pb2.InpaintOptions:
    """Keyword options -> InpaintOptions (None means the server default)."""
    opts = flux_pb2.InpaintOptions(**_picture_options(options, patches))
    for name, value in options.items():
        if value is not None:
            setattr(opts, name, value)
    return opts


def replace_request(image: common_pb2.Image, replacement: str, text: str | None,
                     points: Sequence, box: BoxT | None, masks: Sequence[cv.MaskInput],
                     fill_box: BoxT | None, min_score: float | None, max_instances: int,
                     options: dict[str, Any], patches: bool
                     ) -> orchestrator_pb2.ReplaceObjectsRequest:
    req = orchestrator_pb2.ReplaceObjectsRequest(
        image=image, replacement=replacement,
        inpaint_options=inpaint_options(dict(options), patches))
    _set_target(req, text, points, box, masks, fill_box, min_score, max_instances)
    return req


def with_image(req: M, image: common_pb2.Image) -> M:
    """`req` (built and checked once: its masks are encoded once) with this attempt's
    image, the bytes or a reference to them."""
    req.image.CopyFrom(image)  # type: ignore[attr-defined]
    return req


def _set_target(req: orchestrator_pb2.RemoveObjectsRequest
                | orchestrator_pb2.ReplaceObjectsRequest, text: str | None, points: Sequence,
                box: BoxT | None, masks: Sequence[cv.MaskInput], fill_box: BoxT | None,
                min_score: float | None, max_instances: int) -> None:
    """The one target of a composed call; `fill_box` only exists for ReplaceObjects."""
    given = sum(x for x in (text is not None, bool(points) or box is not None, bool(masks),
                            fill_box is not None))
    if given != 1:
        kinds = "text=, points=/box=, masks=" + (" or fill_box=" if hasattr(req, "box")
                                                  else "")
        raise ValueError(f"give exactly one target: {kinds}")
    if text is not None:
        req.text.text = text
        req.text.max_instances = max_instances
        if min_score is not None:
            req.text.min_score = min_score
    elif masks:
        req.masks.masks.extend(cv.mask_proto(m) for m in masks)
    elif fill_box is not None:
        req.box.CopyFrom(cv.box_proto(fill_box))  # type: ignore[union-attr]
    else:
        req.prompt.points.extend(cv.points_proto(points))
        if box is not None:
            req.prompt.box.CopyFrom(cv.box_proto(box))
