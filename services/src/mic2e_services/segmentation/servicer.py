"""mic2e.v1.SegmentationService: convert request -> submit to the worker -> convert result."""

from __future__ import annotations

import grpc
from mic2e.v1 import segmentation_pb2, segmentation_pb2_grpc

from mic2e_services.api.segmentation import STAGE
from mic2e_services.runtime import convert
from mic2e_services.runtime.calls import provenance, run_unary
from mic2e_services.runtime.images import ImageStore
from mic2e_services.runtime.status import rpc
from mic2e_services.runtime.worker import ModelWorker
from mic2e_services.segmentation import convert as msgs

SERVICE_NAME = "mic2e.v1.SegmentationService"


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    """Serves SAM3 through the shared worker; see the proto for the contract."""

    def __init__(self, worker: ModelWorker, images: ImageStore) -> None:
        self.worker = worker
        self.images = images

    @rpc
    async def SegmentByText(self, request: segmentation_pb2.SegmentByTextRequest,
                            context: grpc.aio.ServicerContext
                            ) -> segmentation_pb2.SegmentByTextResponse:
        fmt = convert.mask_format(request.mask_format, "mask_format")
        image = await convert.image_from_proto(self.images, request.image)
        result, job = await run_unary(self.worker, msgs.text_query(request, image), context,
                                      keep=lambda: self.images.keep(image))
        return msgs.text_response(result.instances, image, fmt,
                                 provenance(self.worker, "segmentation", job, STAGE))

    @rpc
    async def SegmentByPrompt(self, request: segmentation_pb2.SegmentByPromptRequest,
                              context: grpc.aio.ServicerContext
                              ) -> segmentation_pb2.SegmentByPromptResponse:
        fmt = convert.mask_format(request.mask_format, "mask_format")
        msgs.check_before_decoding(request)
        image = await convert.image_from_proto(self.images, request.image)
        result, job = await run_unary(self.worker, msgs.prompt_query(request, image), context,
                                      keep=lambda: self.images.keep(image))
        return msgs.prompt_response(result, image, fmt,
                                   provenance(self.worker, "segmentation", job, STAGE))
