"""ObjectClearService messages <-> the ObjectClear model's plain query and output."""

from __future__ import annotations

from typing import Any

from mic2e.v1 import common_pb2, object_clear_pb2

from mic2e_services.object_clear.types import OPTIONS, ClearOutput, ClearQuery
from mic2e_services.runtime import convert
from mic2e_services.runtime.images import StoredImage

#: ClearStrategy values by the names the model takes (UNSPECIFIED: the default).
_STRATEGIES = {object_clear_pb2.CLEAR_STRATEGY_RESIZE: "resize",
               object_clear_pb2.CLEAR_STRATEGY_CROP: "crop",
               object_clear_pb2.CLEAR_STRATEGY_REFERENCE: "reference"}


def options(message: object_clear_pb2.ClearOptions) -> dict[str, Any]:
    """The options the caller set, by ClearQuery attribute; the strategy by name (an
    unknown enum value stays visible, for the field check to name)."""
    given = convert.given(message, OPTIONS)
    strategy = given.pop("strategy", 0)
    if strategy != object_clear_pb2.CLEAR_STRATEGY_UNSPECIFIED:
        given["strategy"] = _STRATEGIES.get(strategy, f"#{strategy}")
    return given


def clear_query(req: object_clear_pb2.ClearRequest, image: StoredImage, *, max_pixels: int,
                defaults: dict[str, Any] | None = None) -> ClearQuery:
    """Merge the masks (union; their number was checked before the image was decoded:
    `convert.check_mask_count`); options the caller left unset take the server's
    `defaults` (its profile's), then the model's own."""
    merged = convert.merged_masks_from_proto(req.masks, "masks",
                                             size=(image.width, image.height),
                                             max_pixels=max_pixels)
    kwargs = dict(defaults or {})
    kwargs.update(options(req.options))
    return ClearQuery(image=image.image, mask=merged, label=req.label, **kwargs)


def result(out: ClearOutput, fmt: str, provenance: common_pb2.Provenance, *,
           request: object_clear_pb2.ClearRequest, image: StoredImage
           ) -> object_clear_pb2.ClearResponse:
    """The result as the caller asked for it (the whole picture or a patch)."""
    return object_clear_pb2.ClearResponse(result=object_clear_pb2.ClearResult(
        **convert.edit_message(out, fmt, request.options, image, provenance)))
