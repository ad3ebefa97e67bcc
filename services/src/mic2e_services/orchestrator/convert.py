"""EditService messages: building the model servers' requests from a RemoveObjects call."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any, TypeVar

from google.protobuf.message import Message
from mic2e import codecs
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    object_clear_pb2,
    orchestrator_pb2,
    segmentation_pb2,
)

from mic2e_services.api import flux as fx
from mic2e_services.api import object_clear as oc
from mic2e_services.api import segmentation as seg
from mic2e_services.api.messages import clear_options
from mic2e_services.errors import FieldViolation, InvalidArgument
from mic2e_services.runtime import convert
from mic2e_services.schema import MASKS, raise_if

#: RemoveObjects' fields that stand for a model server's, by that server's field path
#: (declared once in each service's types): how errors name what the caller sent.
_TEXT_TARGET = {seg.TEXT.path: "text.text", seg.SCORE_THRESHOLD.path: "text.min_score",
                seg.MAX_INSTANCES.path: "text.max_instances"}
_PROMPT_TARGET = {seg.POINTS.path: "prompt.points", "box": "prompt.box"}
_MASK_TARGET = {MASKS.path: "masks.masks"}
_INPAINTING = {**{f.path: f"inpaint_options.{name}" for name, f in fx.INPAINT_OPTIONS.items()},
               fx.PROMPT.path: "replacement",
               "options.output_format": "inpaint_options.output_format"}
_REMOVAL = {**{f.path: f"clear_options.{name}" for name, f in oc.OPTIONS.items()},
            oc.MASK_DILATION.path: "mask_dilation", oc.LABEL.path: "label",
            "options.output_format": "clear_options.output_format"}


def check(req: orchestrator_pb2.RemoveObjectsRequest) -> None:
    """Every bad field of a RemoveObjects request the orchestrator can see without the
    image (the model servers check the rest), named as the caller sent it; nothing has
    run yet."""
    bad = _target_violations(req)
    options = {**clear_options(req.clear_options), "label": req.label,
               "mask_dilation": mask_dilation(req)}
    bad += _named(oc.CLEAR.check(SimpleNamespace(**options)), _REMOVAL)
    raise_if(bad)


def check_replace(req: orchestrator_pb2.ReplaceObjectsRequest) -> None:
    """As `check`, for ReplaceObjects (the box target is checked against the image's size
    in `box_mask`)."""
    bad = _target_violations(req)
    if req.WhichOneof("target") == "box":
        bad += seg.box_violations((req.box.x0, req.box.y0, req.box.x1, req.box.y1))
    values = {"prompt": req.replacement,
              **convert.given(req.inpaint_options, fx.INPAINT_OPTIONS)}
    bad += _named(fx.INPAINT.check(SimpleNamespace(**{
        name: values.get(name) for name in fx.INPAINT.fields})), _INPAINTING)
    raise_if(bad)


def _target_violations(req: orchestrator_pb2.RemoveObjectsRequest
                       | orchestrator_pb2.ReplaceObjectsRequest) -> list[FieldViolation]:
    target = req.WhichOneof("target")
    bad: list[FieldViolation] = []
    if target is None:
        kinds = "text, prompt, masks or box" if hasattr(req, "box") else "text, prompt or masks"
        bad.append(FieldViolation("target", f"give a {kinds} target"))
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
        bad += _named(MASKS.violations(req.masks.masks), _MASK_TARGET)
    return bad


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


_M = TypeVar("_M", bound=Message)


def _with_image(out: _M, image: common_pb2.Image | None) -> _M:
    """`out` with `image` copied in. Not as a constructor argument: protobuf merges a
    message given there by serializing and parsing it, two copies of a 3 MB photo
    where CopyFrom makes one."""
    if image is not None:
        out.image.CopyFrom(image)  # type: ignore[attr-defined]
    return out


def text_request(req: orchestrator_pb2.RemoveObjectsRequest
                 | orchestrator_pb2.ReplaceObjectsRequest, image: common_pb2.Image
                 ) -> segmentation_pb2.SegmentByTextRequest:
    out = _with_image(segmentation_pb2.SegmentByTextRequest(
        text=req.text.text, max_instances=req.text.max_instances,
        mask_format=common_pb2.MASK_FORMAT_RLE), image)  # RLE: compact, cheap to pass on
    if req.text.HasField("min_score"):
        out.score_threshold = req.text.min_score
    return out


def prompt_request(req: orchestrator_pb2.RemoveObjectsRequest
                   | orchestrator_pb2.ReplaceObjectsRequest, image: common_pb2.Image
                   ) -> segmentation_pb2.SegmentByPromptRequest:
    out = _with_image(segmentation_pb2.SegmentByPromptRequest(
        points=req.prompt.points, mask_format=common_pb2.MASK_FORMAT_RLE), image)
    if req.prompt.HasField("box"):
        out.box.CopyFrom(req.prompt.box)
    return out


def clear_request(req: orchestrator_pb2.RemoveObjectsRequest, image: common_pb2.Image,
                  masks: list[common_pb2.Mask]) -> object_clear_pb2.ClearRequest:
    """The removal of `masks`; the label only when the caller set one (the reference's
    prompt otherwise, whatever the target's text). As a patch: only the changed part
    travels back (`whole_picture` builds the rest for a caller who wants it) - unless the
    whole picture changes anyway (strategy reference) and the caller wants it whole."""
    options = object_clear_pb2.ClearOptions()
    options.CopyFrom(req.clear_options)
    options.mask_dilation = mask_dilation(req)
    options.output_patch = (req.clear_options.output_patch or req.clear_options.strategy
                            != object_clear_pb2.CLEAR_STRATEGY_REFERENCE)
    return _with_image(object_clear_pb2.ClearRequest(masks=masks, label=req.label,
                                                     options=options), image)


def inpaint_request(req: orchestrator_pb2.ReplaceObjectsRequest, image: common_pb2.Image,
                    masks: list[common_pb2.Mask]) -> flux_pb2.InpaintRequest:
    """The repainting of `masks`, always as a patch (as `clear_request`)."""
    options = flux_pb2.InpaintOptions()
    options.CopyFrom(req.inpaint_options)
    options.output_patch = True
    return _with_image(flux_pb2.InpaintRequest(masks=masks, prompt=req.replacement,
                                               options=options), image)


def edit_fields(result: object_clear_pb2.ClearResult | flux_pb2.InpaintResult, data: bytes,
                *, patch: bool, fmt: int, max_pixels: int) -> dict[str, Any]:
    """A model server's edit result as the caller asked for it: its patch passed on, or
    (`patch` False) the whole picture, built here from the caller's bytes (decoded once)
    and the patch; the repainted box and mask passed on. Runs off the event loop."""
    out: dict[str, Any] = {"repainted_box": result.repainted_box}
    if result.HasField("repainted_mask"):
        out["repainted_mask"] = result.repainted_mask
    if not result.HasField("patch"):  # a server that sent the whole picture
        out["image"] = result.image
    elif patch:
        out["patch"] = result.patch
    else:
        out["image"] = whole_picture(data, result.patch, fmt, max_pixels=max_pixels)
    return out


def whole_picture(data: bytes, patch: common_pb2.ImagePatch, fmt: int, *,
                  max_pixels: int = codecs.DEFAULT_MAX_PIXELS) -> common_pb2.EncodedImage:
    """The input (encoded `data`) with `patch` applied, encoded as `fmt` (an ImageFormat)
    with the input's ICC profile."""
    try:
        base = codecs.decode_image(data, max_pixels=max_pixels)
    except codecs.CodecError as exc:  # the model server decoded the same bytes
        raise InvalidArgument("image.data", str(exc)) from None
    whole = codecs.apply_patch(base, codecs.decode_patch(patch.image.data), patch.x, patch.y,
                               in_place=True)
    return convert.encoded_image(whole, convert.image_format(fmt, "output_format"),
                                 base.info.get("icc_profile"))


def box_mask(box: common_pb2.Box, data: bytes) -> common_pb2.Mask:
    """The box as an RLE mask at the image's size (read from its header; the orchestrator
    never decodes pixels): every pixel the box touches, x1 / y1 exclusive."""
    try:
        width, height = codecs.image_size(data)
    except codecs.CodecError as exc:
        raise InvalidArgument("image.data", str(exc)) from None
    raise_if(seg.box_violations((box.x0, box.y0, box.x1, box.y1), (width, height)))
    x0, y0 = int(math.floor(box.x0)), int(math.floor(box.y0))
    x1, y1 = int(math.ceil(box.x1)), int(math.ceil(box.y1))
    # Column-major runs, zeros first: the columns before the box, then per box column
    # y0 zeros (merged with the previous column's tail), the box's rows, the rest.
    counts = [x0 * height + y0]
    for column in range(x0, x1):
        counts.append(y1 - y0)
        tail = height - y1
        counts.append(tail + (y0 if column + 1 < x1 else (width - x1) * height))
    return common_pb2.Mask(width=width, height=height, rle=common_pb2.Rle(counts=counts))


def found_masks(instances: Sequence[common_pb2.Instance]) -> list[common_pb2.Mask]:
    """What segmentation found, as masks for the next stage: one per instance, or past the
    model servers' limit (MASKS) their union, which both servers would take anyway (they
    merge the masks they get) - so "remove the birds" works for any number of birds."""
    masks = [inst.mask for inst in instances]
    if len(masks) <= MASKS.max_items or any(m.WhichOneof("encoding") != "rle" for m in masks):
        return masks
    return [union(masks)]


def union(masks: Sequence[common_pb2.Mask]) -> common_pb2.Mask:
    """The union of RLE masks of one size, by merging their runs (no pixels decoded)."""
    width, height = masks[0].width, masks[0].height
    spans: list[tuple[int, int]] = []
    for mask in masks:
        at = 0
        for k, run in enumerate(mask.rle.counts):
            if k % 2 and run:  # odd runs are "on" (zeros first)
                spans.append((at, at + run))
            at += run
    counts: list[int] = []
    end = 0  # where the last "on" run ends
    for start, stop in sorted(spans):
        if counts and start <= end:
            counts[-1] += max(0, stop - end)
        else:
            counts += [start - end, stop - start]
        end = max(end, stop)
    counts.append(width * height - end)
    return common_pb2.Mask(width=width, height=height, rle=common_pb2.Rle(counts=counts))


def caller_field(target: str, replace: bool = False) -> Callable[[str], str]:
    """Map a model server's field path to the RemoveObjects (or, `replace`,
    ReplaceObjects) field the caller set."""
    paths = {**(_INPAINTING if replace else _REMOVAL),
             **(_MASK_TARGET if target == "masks" else {}),
             **{"text": _TEXT_TARGET, "prompt": _PROMPT_TARGET}.get(target, {})}
    return lambda field: caller_path(field, paths)
