"""ObjectClearService messages <-> the ObjectClear model's plain query and output."""

from __future__ import annotations

from typing import Any

from mic2e.v1 import common_pb2, object_clear_pb2

from mic2e_services.object_clear.types import OPTIONS, ClearOutput, ClearQuery
from mic2e_services.runtime import convert
from mic2e_services.runtime.images import StoredImage


def clear_query(req: object_clear_pb2.ClearRequest, image: StoredImage, *, max_pixels: int,
                defaults: dict[str, Any] | None = None) -> ClearQuery:
    """Merge the masks (union; their number was checked before the image was decoded:
    `convert.check_mask_count`); options the caller left unset take the server's
    `defaults` (its profile's), then the model's own."""
    merged = convert.merged_masks_from_proto(req.masks, "masks",
                                             size=(image.width, image.height),
                                             max_pixels=max_pixels)
    kwargs = dict(defaults or {})
    kwargs.update(convert.given(req.options, OPTIONS))
    return ClearQuery(image=image.image, mask=merged, label=req.label, **kwargs)


def result(out: ClearOutput, fmt: str, provenance: common_pb2.Provenance
           ) -> object_clear_pb2.ClearResponse:
    return object_clear_pb2.ClearResponse(result=object_clear_pb2.ClearResult(
        image=convert.encoded_image(out.image, fmt), mask=convert.mask_to_proto(out.mask, "png"),
        provenance=provenance))
