"""mic2e.v1.ObjectClearService: convert request -> submit to the worker -> stream results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from mic2e.v1 import object_clear_pb2, object_clear_pb2_grpc

from mic2e_services.api.object_clear import STAGE
from mic2e_services.object_clear import convert as msgs
from mic2e_services.runtime import convert
from mic2e_services.runtime.calls import stream_job
from mic2e_services.runtime.images import ImageStore
from mic2e_services.runtime.status import stream_rpc
from mic2e_services.runtime.worker import ModelWorker

SERVICE_NAME = "mic2e.v1.ObjectClearService"


class ObjectClearServicer(object_clear_pb2_grpc.ObjectClearServiceServicer):
    """Serves ObjectClear through the shared worker; see the proto for the contract."""

    def __init__(self, worker: ModelWorker, images: ImageStore,
                 defaults: dict[str, Any] | None = None) -> None:
        self.worker = worker
        self.images = images
        #: The server's values for options a caller leaves unset (its profile's).
        self.defaults = defaults or {}

    @stream_rpc
    async def Clear(self, request: object_clear_pb2.ClearRequest,
                    context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[object_clear_pb2.ClearResponse]:
        fmt = convert.image_format(request.options.output_format, "options.output_format")
        convert.check_mask_count(request.masks)  # before the image is decoded
        image = await convert.image_from_proto(self.images, request.image)
        query = msgs.clear_query(request, image, max_pixels=self.images.max_pixels,
                               defaults=self.defaults)
        async for message in stream_job(
                self.worker, query, context, server="object-clear", stage=STAGE,
                progress=lambda p: object_clear_pb2.ClearResponse(progress=p),
                result=lambda out, provenance: msgs.result(out, fmt, provenance,
                                                         request=request, image=image),
                keep=lambda: self.images.keep(image)):
            yield message
