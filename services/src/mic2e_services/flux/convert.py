"""FluxService messages <-> the FLUX model's plain query and output."""

from __future__ import annotations

from typing import Any

from mic2e.v1 import common_pb2, flux_pb2

from mic2e_services.api.flux import (
    INPAINT_OPTIONS,
    GenerateOutput,
    GenerateQuery,
    InpaintOutput,
    InpaintQuery,
)
from mic2e_services.runtime import convert
from mic2e_services.runtime.images import StoredImage


def generate_query(req: flux_pb2.GenerateRequest, defaults: dict[str, Any] | None = None
                   ) -> GenerateQuery:
    """Fields the caller left unset take the server's `defaults` (its profile's), then the
    model's own."""
    kwargs = dict(defaults or {})
    kwargs.update(convert.given(req, ("width", "height", "steps", "seed")))
    return GenerateQuery(prompt=req.prompt, **kwargs)


def result(out: GenerateOutput, fmt: str, provenance: common_pb2.Provenance
           ) -> flux_pb2.GenerateResponse:
    return flux_pb2.GenerateResponse(result=flux_pb2.GenerateResult(
        image=convert.encoded_image(out.image, fmt), provenance=provenance,
        prompt_truncated=out.prompt_truncated, truncated_prompt=out.truncated_prompt))


def inpaint_query(req: flux_pb2.InpaintRequest, image: StoredImage, *, max_pixels: int
                  ) -> InpaintQuery:
    """The masks merged (union; their number was checked before the image was decoded:
    `convert.check_mask_count`); options the caller left unset take the model's own."""
    mask = convert.merged_masks_from_proto(req.masks, "masks",
                                           size=(image.width, image.height),
                                           max_pixels=max_pixels)
    return InpaintQuery(image=image.image, mask=mask, prompt=req.prompt,
                        **convert.given(req.options, INPAINT_OPTIONS))


def inpaint_result(out: InpaintOutput, fmt: str, provenance: common_pb2.Provenance, *,
                   request: flux_pb2.InpaintRequest, image: StoredImage
                   ) -> flux_pb2.InpaintResponse:
    """The result as the caller asked for it (the whole picture or a patch)."""
    return flux_pb2.InpaintResponse(result=flux_pb2.InpaintResult(
        prompt_truncated=out.prompt_truncated, truncated_prompt=out.truncated_prompt,
        **convert.edit_message(out, fmt, request.options, image, provenance)))
