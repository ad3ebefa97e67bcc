"""mic2e.v1.FluxService: convert request -> submit to the worker -> stream results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from mic2e.v1 import flux_pb2, flux_pb2_grpc

from mic2e_services.api.flux import INPAINT_STAGE, STAGE
from mic2e_services.flux import convert as msgs
from mic2e_services.runtime import convert
from mic2e_services.runtime.calls import stream_job
from mic2e_services.runtime.images import ImageStore
from mic2e_services.runtime.status import stream_rpc
from mic2e_services.runtime.worker import ModelWorker

SERVICE_NAME = "mic2e.v1.FluxService"


class FluxServicer(flux_pb2_grpc.FluxServiceServicer):
    """Serves FLUX.1 (Generate, Inpaint) through the shared worker; see the proto for the
    contract."""

    def __init__(self, worker: ModelWorker, images: ImageStore,
                 defaults: dict[str, Any] | None = None) -> None:
        self.worker = worker
        self.images = images
        #: The server's values for fields a caller leaves unset (its profile's).
        self.defaults = defaults or {}

    @stream_rpc
    async def Generate(self, request: flux_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[flux_pb2.GenerateResponse]:
        fmt = convert.image_format(request.output_format, "output_format")
        async for message in stream_job(
                self.worker, msgs.generate_query(request, self.defaults), context,
                server="flux", stage=STAGE,
                progress=lambda p: flux_pb2.GenerateResponse(progress=p),
                result=lambda out, provenance: msgs.result(out, fmt, provenance)):
            yield message

    @stream_rpc
    async def Inpaint(self, request: flux_pb2.InpaintRequest,
                      context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[flux_pb2.InpaintResponse]:
        fmt = convert.image_format(request.options.output_format, "options.output_format")
        convert.check_mask_count(request.masks)  # before the image is decoded
        image = await convert.image_from_proto(self.images, request.image)
        query = msgs.inpaint_query(request, image, max_pixels=self.images.max_pixels)
        async for message in stream_job(
                self.worker, query, context, server="flux", stage=INPAINT_STAGE,
                progress=lambda p: flux_pb2.InpaintResponse(progress=p),
                result=lambda out, provenance: msgs.inpaint_result(
                    out, fmt, provenance, request=request, image=image),
                keep=lambda: self.images.keep(image)):
            yield message
