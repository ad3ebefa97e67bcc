"""FluxService messages <-> the FLUX model's plain query and output."""

from __future__ import annotations

from typing import Any

from mic2e.v1 import common_pb2, flux_pb2

from mic2e_services.flux.types import GenerateOutput, GenerateQuery
from mic2e_services.runtime import convert


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
