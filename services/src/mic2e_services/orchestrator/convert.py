"""EditService messages: building the model servers' requests from a RemoveObjects call."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from mic2e.v1 import (
    common_pb2,
    object_clear_pb2,
    orchestrator_pb2,
    segmentation_pb2,
)

from mic2e_services.errors import FieldViolation
from mic2e_services.object_clear import types as oc
from mic2e_services.runtime import convert
from mic2e_services.schema import raise_if
from mic2e_services.segmentation import types as seg

#: RemoveObjects' fields that stand for a model server's, by that server's field path
#: (declared once in each service's types): how errors name what the caller sent.
_TEXT_TARGET = {seg.TEXT.path: "text.text", seg.SCORE_THRESHOLD.path: "text.min_score",
                seg.MAX_INSTANCES.path: "text.max_instances"}
_PROMPT_TARGET = {seg.POINTS.path: "prompt.points", "box": "prompt.box"}
_MASK_TARGET = {oc.MASKS.path: "masks.masks"}
_REMOVAL = {**{f.path: f"clear_options.{name}" for name, f in oc.OPTIONS.items()},
            oc.MASK_DILATION.path: "mask_dilation", oc.LABEL.path: "label"}


def check(req: orchestrator_pb2.RemoveObjectsRequest) -> None:
    """Every bad field of a RemoveObjects request the orchestrator can see without the
    image (the model servers check the rest), named as the caller sent it; nothing has
    run yet."""
    target = req.WhichOneof("target")
    bad: list[FieldViolation] = []
    if target is None:
        bad.append(FieldViolation("target", "give a text, prompt or masks target"))
    elif target == "text":
        values = {"text": req.text.text, "max_instances": req.text.max_instances}
        if req.text.HasField("min_score"):
            values["score_threshold"] = req.text.min_score
        bad += _named(seg.SEGMENT_BY_TEXT.check(SimpleNamespace(**values)), _TEXT_TARGET)
    elif target == "prompt":
        if not req.prompt.points and not req.prompt.HasField("box"):
            bad.append(FieldViolation("prompt", "give at least one point or a box"))
        bad += _named(seg.POINTS.violations(req.prompt.points), _PROMPT_TARGET)
    elif target == "masks":
        bad += _named(oc.MASKS.violations(req.masks.masks), _MASK_TARGET)
    options = {**convert.given(req.clear_options, oc.OPTIONS), "label": req.label,
               "mask_dilation": mask_dilation(req)}
    bad += _named(oc.CLEAR.check(SimpleNamespace(**options)), _REMOVAL)
    raise_if(bad)


def mask_dilation(req: orchestrator_pb2.RemoveObjectsRequest) -> int:
    """RemoveObjects' own mask_dilation (ClearOptions' is ignored); unset: ObjectClear's
    default."""
    return req.mask_dilation if req.HasField("mask_dilation") else oc.MASK_DILATION.default


def _named(violations: list[FieldViolation], paths: dict[str, str]) -> list[FieldViolation]:
    return [FieldViolation(caller_path(v.field, paths), v.description) for v in violations]


def caller_path(field: str, paths: dict[str, str]) -> str:
    """A model server's field path as the caller's: the longest declared path it starts
    with (a whole segment: ``points`` for ``points[0].label``) replaced from `paths`;
    others stay as they are."""
    for root in sorted(paths, key=len, reverse=True):
        if field == root or field.startswith((f"{root}[", f"{root}.")):
            return paths[root] + field[len(root):]
    return field


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
    paths = {**_REMOVAL, **(_MASK_TARGET if target == "masks" else {}),
             **{"text": _TEXT_TARGET, "prompt": _PROMPT_TARGET}.get(target, {})}
    return lambda field: caller_path(field, paths)
