"""SegmentationService messages <-> the segmentation model's plain queries and results."""

from __future__ import annotations

from mic2e.v1 import common_pb2, segmentation_pb2

from mic2e_services.api.segmentation import (
    POINTS,
    SCORE_THRESHOLD,
    PromptQuery,
    PromptResult,
    Segment,
    TextQuery,
)
from mic2e_services.errors import InvalidArgument
from mic2e_services.runtime import convert
from mic2e_services.runtime.images import StoredImage
from mic2e_services.schema import raise_if


def text_query(req: segmentation_pb2.SegmentByTextRequest, image: StoredImage) -> TextQuery:
    threshold = (req.score_threshold if req.HasField("score_threshold")
                 else SCORE_THRESHOLD.default)
    return TextQuery(image=image.image, image_key=image.sha256, text=req.text,
                     score_threshold=threshold, max_instances=req.max_instances,
                     original_size=(image.width, image.height))


def check_before_decoding(req: segmentation_pb2.SegmentByPromptRequest) -> None:
    """What can be refused before the image is decoded: the number of points."""
    raise_if(POINTS.violations(req.points))


def prompt_query(req: segmentation_pb2.SegmentByPromptRequest, image: StoredImage
                 ) -> PromptQuery:
    """The points (their number already checked: `check_before_decoding`) and box."""
    points = []
    for i, p in enumerate(req.points):
        if p.label not in (common_pb2.POINT_LABEL_UNSPECIFIED, common_pb2.POINT_LABEL_POSITIVE,
                           common_pb2.POINT_LABEL_NEGATIVE):
            raise InvalidArgument(f"points[{i}].label", f"unknown point label {p.label}")
        points.append((p.x, p.y, p.label != common_pb2.POINT_LABEL_NEGATIVE))
    box = None
    if req.HasField("box"):
        box = (req.box.x0, req.box.y0, req.box.x1, req.box.y1)
    return PromptQuery(image=image.image, image_key=image.sha256, points=tuple(points), box=box,
                       return_alternatives=req.return_alternatives,
                       original_size=(image.width, image.height))


def instance(segment: Segment, fmt: str) -> common_pb2.Instance:
    return convert.instance_to_proto(segment.mask, segment.score, segment.box, fmt)


def text_response(instances: list[Segment], image: StoredImage, fmt: str,
                  provenance: common_pb2.Provenance) -> segmentation_pb2.SegmentByTextResponse:
    return segmentation_pb2.SegmentByTextResponse(
        instances=[instance(s, fmt) for s in instances], image_width=image.width,
        image_height=image.height, image_sha256=image.sha256, provenance=provenance)


def prompt_response(result: PromptResult, image: StoredImage, fmt: str,
                    provenance: common_pb2.Provenance
                    ) -> segmentation_pb2.SegmentByPromptResponse:
    return segmentation_pb2.SegmentByPromptResponse(
        best=instance(result.best, fmt),
        alternatives=[instance(s, fmt) for s in result.alternatives],
        image_width=image.width, image_height=image.height, image_sha256=image.sha256,
        provenance=provenance)
