"""ObjectClearService messages <-> the ObjectClear model's plain query and output."""

from __future__ import annotations

from typing import Any

from mic2e.v1 import common_pb2, object_clear_pb2

from mic2e_services.api.messages import clear_options
from mic2e_services.api.object_clear import ClearOutput, ClearQuery
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
    kwargs.update(clear_options(req.options))
    return ClearQuery(image=image.image, mask=merged, label=req.label, **kwargs)


def result(out: ClearOutput, fmt: str, provenance: common_pb2.Provenance, *,
           request: object_clear_pb2.ClearRequest, image: StoredImage
           ) -> object_clear_pb2.ClearResponse:
    """The result as the caller asked for it (the whole picture or a patch)."""
    return object_clear_pb2.ClearResponse(result=object_clear_pb2.ClearResult(
        **convert.edit_message(out, fmt, request.options, image, provenance)))
