"""EditService messages: building the model servers' requests from a RemoveObjects call."""

from __future__ import annotations

from collections.abc import Callable

from mic2e.v1 import (
    common_pb2,
    object_clear_pb2,
    orchestrator_pb2,
    segmentation_pb2,
)

from mic2e_services.errors import InvalidArgument

#: Mask growth when the caller sets none: covers the soft edge SAM masks leave.
DEFAULT_MASK_DILATION = 10
MAX_MASK_DILATION = 256


def mask_dilation(req: orchestrator_pb2.RemoveObjectsRequest) -> int:
    value = req.mask_dilation if req.HasField("mask_dilation") else DEFAULT_MASK_DILATION
    if value > MAX_MASK_DILATION:
        raise InvalidArgument("mask_dilation", f"must be 0..{MAX_MASK_DILATION}, got {value}")
    return value


def text_request(req: orchestrator_pb2.RemoveObjectsRequest, image: common_pb2.Image
                 ) -> segmentation_pb2.SegmentByTextRequest:
    out = segmentation_pb2.SegmentByTextRequest(
        image=image, text=req.text.text, max_instances=req.text.max_instances,
        mask_format=common_pb2.MASK_FORMAT_RLE)  # compact, and cheap to pass on
    if req.text.HasField("min_score"):
        out.score_threshold = req.text.min_score
    return out


def prompt_request(req: orchestrator_pb2.RemoveObjectsRequest, image: common_pb2.Image
                   ) -> segmentation_pb2.SegmentByPromptRequest:
    if not req.prompt.points and not req.prompt.HasField("box"):
        raise InvalidArgument("prompt", "give at least one point or a box")
    out = segmentation_pb2.SegmentByPromptRequest(
        image=image, points=req.prompt.points, mask_format=common_pb2.MASK_FORMAT_RLE)
    if req.prompt.HasField("box"):
        out.box.CopyFrom(req.prompt.box)
    return out


def clear_request(req: orchestrator_pb2.RemoveObjectsRequest, image: common_pb2.Image,
                  masks: list[common_pb2.Mask]) -> object_clear_pb2.ClearRequest:
    """The removal of `masks`; the label only when the caller set one (the reference's
    prompt otherwise, whatever the target's text)."""
    options = object_clear_pb2.ClearOptions()
    options.CopyFrom(req.clear_options)
    options.mask_dilation = mask_dilation(req)
    return object_clear_pb2.ClearRequest(image=image, masks=masks, label=req.label,
                                         options=options)


def caller_field(target: str) -> Callable[[str], str]:
    """Map a model server's field path to the RemoveObjects field the caller set."""
    def rename(field: str) -> str:
        if field.startswith("options."):
            return "clear_options." + field.removeprefix("options.")
        if field.startswith("masks"):
            return "masks." + field if target == "masks" else field
        if target == "text":
            return {"text": "text.text", "score_threshold": "text.min_score",
                    "max_instances": "text.max_instances"}.get(field, field)
        if target == "prompt" and field.startswith(("points", "box")):
            return "prompt." + field
        return field

    return rename
