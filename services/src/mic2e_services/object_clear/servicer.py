"""mic2e.v1.ObjectClearService: convert request -> submit to the worker -> stream results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from mic2e.v1 import object_clear_pb2, object_clear_pb2_grpc

from mic2e_services.object_clear import convert as oc
from mic2e_services.runtime import convert
from mic2e_services.runtime.calls import Finished, run_streaming
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
        image = await convert.image_from_proto(self.images, request.image)
        query = oc.clear_query(request, image, max_pixels=self.images.max_pixels,
                               defaults=self.defaults)
        async for item in run_streaming(self.worker, query, context):
            if not isinstance(item, Finished):
                yield object_clear_pb2.ClearResponse(progress=convert.progress_to_proto(item))
                continue
            model, out = self.worker.model, item.result
            provenance = convert.provenance(
                server="object-clear", model_id=model.model_id, revision=model.revision,
                dtype=model.dtype_name, device=model.device_name, steps=out.steps,
                seed=out.seed, timings=item.job.timings("object_clear"))
            # Encoding a large PNG takes tens of milliseconds: keep it off the event loop.
            yield await asyncio.to_thread(oc.result, out, fmt, provenance)
