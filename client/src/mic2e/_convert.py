"""Conversions between the client's plain types and the mic2e.v1 messages (internal)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from mic2e import codecs
from mic2e.types import (
    BoxT,
    ClearResult,
    GenerateResult,
    InpaintResult,
    Instance,
    Patch,
    Point,
    Progress,
    PromptSegmentation,
    Provenance,
    RemoveResult,
    ReplaceResult,
    Segmented,
    TextSegmentation,
)
from mic2e.v1 import common_pb2, flux_pb2, object_clear_pb2, orchestrator_pb2, segmentation_pb2

#: What the client accepts as an image: a path, encoded bytes, or a PIL image.
ImageInput = str | os.PathLike | bytes | Image.Image
#: What the client accepts as a mask: a boolean array, a path to a PNG, or a PIL image.
MaskInput = np.ndarray | str | os.PathLike | Image.Image

_FORMATS = {"png": common_pb2.IMAGE_FORMAT_PNG, "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
            "jpg": common_pb2.IMAGE_FORMAT_JPEG, "webp": common_pb2.IMAGE_FORMAT_WEBP}


def image_bytes(image: ImageInput) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, Image.Image):
        return codecs.encode_image(image, "png")
    with open(image, "rb") as f:
        return f.read()


def mask_proto(mask: MaskInput) -> common_pb2.Mask:
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask if mask.mode == "L" else mask.convert("L")) > 127
    elif isinstance(mask, np.ndarray):
        arr = mask.astype(bool)
    else:
        with open(mask, "rb") as f:
            arr = codecs.decode_mask_png(f.read())
    h, w = arr.shape
    return common_pb2.Mask(width=w, height=h, png=codecs.encode_mask_png(arr))


#: ClearStrategy values by name.
STRATEGIES = {"resize": object_clear_pb2.CLEAR_STRATEGY_RESIZE,
              "crop": object_clear_pb2.CLEAR_STRATEGY_CROP,
              "reference": object_clear_pb2.CLEAR_STRATEGY_REFERENCE}


def strategy(name: str) -> int:
    try:
        return STRATEGIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}"
                         ) from None


def output_format(name: str) -> int:
    try:
        return _FORMATS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown output format {name!r}; use png, jpeg or webp") from None


def points_proto(points: Iterable[Point | tuple]) -> list[common_pb2.Point]:
    out = []
    for p in points:
        p = p if isinstance(p, Point) else Point(*p)
        label = common_pb2.POINT_LABEL_POSITIVE if p.positive else common_pb2.POINT_LABEL_NEGATIVE
        out.append(common_pb2.Point(x=p.x, y=p.y, label=label))
    return out


def box_proto(box: BoxT | None) -> common_pb2.Box | None:
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def mask_array(mask: common_pb2.Mask) -> np.ndarray:
    if mask.WhichOneof("encoding") == "rle":
        return codecs.rle_decode(list(mask.rle.counts), mask.width, mask.height)
    return codecs.decode_mask_png(mask.png)


def instance(msg: common_pb2.Instance) -> Instance:
    b = msg.box
    return Instance(mask_array(msg.mask), msg.score, (b.x0, b.y0, b.x1, b.y1))


def instances(msgs: Sequence[common_pb2.Instance]) -> list[Instance]:
    return [instance(m) for m in msgs]


def provenance(msg: common_pb2.Provenance) -> Provenance:
    return Provenance(
        server=msg.server, model_id=msg.model_id, revision=msg.revision, dtype=msg.dtype,
        device=msg.device, steps=msg.steps, seed=msg.seed,
        timings={t.stage: t.duration.ToNanoseconds() / 1e9 for t in msg.timings})


def progress(msg: common_pb2.Progress) -> Progress:
    return Progress(msg.stage, msg.step, msg.total_steps, msg.elapsed.ToNanoseconds() / 1e9)


def decoded(msg: common_pb2.EncodedImage) -> Image.Image:
    img = Image.open(io.BytesIO(msg.data))
    img.load()
    return img


def picture(result: object, sent: bytes | None) -> dict:
    """An edit result's picture fields: the whole picture the server sent, or the patch
    it sent applied to `sent` (the input's bytes, decoded here as the servers decode
    them, once); the repainted box and mask."""
    box = result.repainted_box  # type: ignore[attr-defined]
    out: dict = {"repainted_box": (int(box.x0), int(box.y0), int(box.x1), int(box.y1)),
                 "repainted_mask": (mask_array(result.repainted_mask)  # type: ignore[attr-defined]
                                    if result.HasField("repainted_mask") else None)}  # type: ignore[attr-defined]
    if not result.HasField("patch"):  # type: ignore[attr-defined]
        image = result.image  # type: ignore[attr-defined]
        return {**out, "image": decoded(image), "data": image.data}
    patch = result.patch  # type: ignore[attr-defined]
    if sent is None:
        raise codecs.CodecError("got a patch, but this call sent no image bytes to apply it to")
    whole = codecs.apply_patch(codecs.decode_image(sent), codecs.decode_patch(patch.image.data),
                               patch.x, patch.y, in_place=True)
    return {**out, "image": whole, "data": None,
            "patch": Patch(patch.x, patch.y, patch.image.data)}


def text_segmentation(msg: segmentation_pb2.SegmentByTextResponse) -> TextSegmentation:
    return TextSegmentation(instances(msg.instances), msg.image_width, msg.image_height,
                            msg.image_sha256, provenance(msg.provenance))


def prompt_segmentation(msg: segmentation_pb2.SegmentByPromptResponse) -> PromptSegmentation:
    return PromptSegmentation(instance(msg.best), instances(msg.alternatives), msg.image_width,
                              msg.image_height, msg.image_sha256, provenance(msg.provenance))


def clear_event(msg: object_clear_pb2.ClearResponse, sent: bytes | None = None
                ) -> Progress | ClearResult:
    if msg.WhichOneof("event") == "progress":
        return progress(msg.progress)
    r = msg.result
    return ClearResult(mask=mask_array(r.mask), provenance=provenance(r.provenance),
                       **picture(r, sent))


def generate_event(msg: flux_pb2.GenerateResponse) -> Progress | GenerateResult:
    if msg.WhichOneof("event") == "progress":
        return progress(msg.progress)
    r = msg.result
    return GenerateResult(decoded(r.image), provenance(r.provenance), r.prompt_truncated,
                          r.truncated_prompt, r.image.data)


def _composed_event(msg: orchestrator_pb2.RemoveObjectsResponse
                    | orchestrator_pb2.ReplaceObjectsResponse) -> Progress | Segmented | None:
    """A composed call's progress or segmentation event; None for its result."""
    kind = msg.WhichOneof("event")
    if kind == "progress":
        return progress(msg.progress)
    if kind == "segmentation":
        return Segmented(instances(msg.segmentation.instances),
                         provenance(msg.segmentation.provenance))
    return None


def _stages(r: orchestrator_pb2.RemoveObjectsResult | orchestrator_pb2.ReplaceObjectsResult
            ) -> tuple[list[Provenance], dict[str, float]]:
    return ([provenance(p) for p in r.stages],
            {t.stage: t.duration.ToNanoseconds() / 1e9 for t in r.timings})


def remove_event(msg: orchestrator_pb2.RemoveObjectsResponse, sent: bytes | None = None
                 ) -> Progress | Segmented | RemoveResult:
    event = _composed_event(msg)
    if event is not None:
        return event
    r = msg.result
    stages, timings = _stages(r)
    return RemoveResult(mask=mask_array(r.mask), instances=instances(r.instances),
                        stages=stages, timings=timings, **picture(r, sent))


def inpaint_event(msg: flux_pb2.InpaintResponse, sent: bytes | None = None
                  ) -> Progress | InpaintResult:
    if msg.WhichOneof("event") == "progress":
        return progress(msg.progress)
    r = msg.result
    return InpaintResult(mask=mask_array(r.mask), provenance=provenance(r.provenance),
                         prompt_truncated=r.prompt_truncated,
                         truncated_prompt=r.truncated_prompt, **picture(r, sent))


def replace_event(msg: orchestrator_pb2.ReplaceObjectsResponse, sent: bytes | None = None
                  ) -> Progress | Segmented | ReplaceResult:
    event = _composed_event(msg)
    if event is not None:
        return event
    r = msg.result
    stages, timings = _stages(r)
    return ReplaceResult(mask=mask_array(r.mask), instances=instances(r.instances),
                         stages=stages, timings=timings, prompt_truncated=r.prompt_truncated,
                         truncated_prompt=r.truncated_prompt, **picture(r, sent))
