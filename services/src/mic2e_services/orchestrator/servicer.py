"""mic2e.v1.EditService: composes the model servers' calls. No model, no torch.

RemoveObjects streams, in order: Progress("segmentation"), the SegmentationResult as soon
as it is known, the object-clear server's per-step Progress passed through, then one
RemoveObjectsResult. The caller's deadline and cancellation reach every downstream call;
a failing stage ends the stream with that stage's status code and an ErrorInfo naming it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from mic2e import codecs
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    object_clear_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from mic2e_services.errors import DownstreamError, InvalidArgument, NotFound
from mic2e_services.orchestrator import convert as oc
from mic2e_services.orchestrator.downstream import Downstream
from mic2e_services.runtime import convert
from mic2e_services.runtime.images import LRU, check_reference
from mic2e_services.runtime.status import rpc, stream_rpc

SERVICE_NAME = "mic2e.v1.EditService"


class EditServicer(orchestrator_pb2_grpc.EditServiceServicer):
    """See the module docstring and orchestrator.proto."""

    def __init__(self, segmentation: Downstream, object_clear: Downstream, flux: Downstream,
                 *, image_cache_bytes: int = 256 * 2**20) -> None:
        self.segmentation = segmentation
        self.object_clear = object_clear
        self.flux = flux
        self._seg = segmentation_pb2_grpc.SegmentationServiceStub(segmentation.channel)
        self._clear = object_clear_pb2_grpc.ObjectClearServiceStub(object_clear.channel)
        self._flux = flux_pb2_grpc.FluxServiceStub(flux.channel)
        # Encoded bytes by SHA-256, so callers may refer to an image they sent before;
        # bounded in bytes, and only images a model server accepted work on (`_keep`).
        self._images: LRU[str, bytes] = LRU(image_cache_bytes)

    def _image(self, image: common_pb2.Image, field: str = "image") -> tuple[str, bytes]:
        """(sha256, bytes) of the caller's image; the orchestrator never decodes it."""
        source = image.WhichOneof("source")
        if source == "data":
            if not image.data:
                raise InvalidArgument(f"{field}.data", "image data is empty")
            return codecs.sha256_hex(image.data), image.data
        if source == "sha256":
            sha = check_reference(image.sha256, f"{field}.sha256")
            data = self._images.get(sha)
            if data is None:
                raise NotFound(f"image {sha} is not held by this server; send its bytes",
                               reason="IMAGE_NOT_FOUND", metadata={"sha256": sha})
            return sha, data
        raise InvalidArgument(field, "an image is required (data or sha256)")

    def image_cache_bytes(self) -> int:
        """Encoded bytes of the images held for references."""
        return self._images.bytes

    def _keep(self, sha: str, data: bytes) -> None:
        """Remember an image once a model server accepted work on it: what every server
        refused (junk, a bomb) is never kept here."""
        self._images.put(sha, data)

    # -- pass-through ----------------------------------------------------------------------
    async def _segment(self, request: Any, method: Callable[..., Awaitable[Any]],
                       context: grpc.aio.ServicerContext) -> Any:
        """Forward a segmentation call unchanged but for its image (a reference if held)."""
        sha, data = self._image(request.image)

        def call(image: common_pb2.Image) -> Awaitable[Any]:
            forwarded = type(request)()
            forwarded.CopyFrom(request)
            forwarded.image.CopyFrom(image)
            return method(forwarded, timeout=context.time_remaining(),
                          metadata=self.segmentation.metadata)

        response = await self.segmentation.unary("segmentation", data, call)
        self._keep(sha, data)
        return response

    @rpc
    async def SegmentByText(self, request: segmentation_pb2.SegmentByTextRequest,
                            context: grpc.aio.ServicerContext
                            ) -> segmentation_pb2.SegmentByTextResponse:
        return await self._segment(request, self._seg.SegmentByText, context)

    @rpc
    async def SegmentByPrompt(self, request: segmentation_pb2.SegmentByPromptRequest,
                              context: grpc.aio.ServicerContext
                              ) -> segmentation_pb2.SegmentByPromptResponse:
        return await self._segment(request, self._seg.SegmentByPrompt, context)

    @stream_rpc
    async def Generate(self, request: flux_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[flux_pb2.GenerateResponse]:
        async for msg in self.flux.stream(
                "generation", None,
                lambda _: self._flux.Generate(request, timeout=context.time_remaining(),
                                              metadata=self.flux.metadata)):
            yield msg

    # -- composition -----------------------------------------------------------------------
    @stream_rpc
    async def RemoveObjects(self, request: orchestrator_pb2.RemoveObjectsRequest,
                            context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[orchestrator_pb2.RemoveObjectsResponse]:
        t0 = time.monotonic()
        Event = orchestrator_pb2.RemoveObjectsResponse
        rename = oc.caller_field(request.WhichOneof("target") or "")

        # 1. Check the request and take the image (bytes or a reference we hold).
        oc.check(request)
        target = request.WhichOneof("target")
        sha, data = self._image(request.image)
        timings: list[tuple[str, float]] = []
        stages: list[common_pb2.Provenance] = []

        # 2. Segment, unless the caller brought masks; stream the instances at once.
        instances: list[common_pb2.Instance] = []
        if target == "masks":
            masks = list(request.masks.masks)
        else:
            yield Event(progress=common_pb2.Progress(
                stage="segmentation", step=0, total_steps=1,
                elapsed=convert.duration(time.monotonic() - t0)))
            t_seg = time.monotonic()
            if target == "text":
                seg = await self.segmentation.unary(
                    "segmentation", data, lambda img: self._seg.SegmentByText(
                        oc.text_request(request, img), timeout=context.time_remaining(),
                        metadata=self.segmentation.metadata), rename)
                instances = list(seg.instances)
            else:
                seg = await self.segmentation.unary(
                    "segmentation", data, lambda img: self._seg.SegmentByPrompt(
                        oc.prompt_request(request, img), timeout=context.time_remaining(),
                        metadata=self.segmentation.metadata), rename)
                instances = [seg.best]
            self._keep(sha, data)
            timings.append(("segmentation", time.monotonic() - t_seg))
            stages.append(seg.provenance)
            yield Event(progress=common_pb2.Progress(
                stage="segmentation", step=1, total_steps=1,
                elapsed=convert.duration(time.monotonic() - t0)))
            yield Event(segmentation=orchestrator_pb2.SegmentationResult(
                instances=instances, provenance=seg.provenance))
            if not instances:
                raise NotFound(f"no instance of {request.text.text!r} found",
                               reason="NO_INSTANCES", metadata={"text": request.text.text})
            masks = [inst.mask for inst in instances]

        # 3. Remove: pass the per-step progress through, keep the result.
        t_clear = time.monotonic()
        result = None
        async for msg in self.object_clear.stream(
                "object_clear", data, lambda img: self._clear.Clear(
                    oc.clear_request(request, img, masks),
                    timeout=context.time_remaining(), metadata=self.object_clear.metadata),
                rename):
            if result is None:  # the server accepted the work: its image may be referred to
                self._keep(sha, data)
            if msg.WhichOneof("event") == "progress":
                yield Event(progress=msg.progress)
            else:
                result = msg.result
        if result is None:  # a server that breaks the stream contract, not the caller's fault
            raise DownstreamError("object_clear", "UNAVAILABLE",
                                  "the stream ended without a result",
                                  {"server": self.object_clear.address})
        timings.append(("object_clear", time.monotonic() - t_clear))
        stages.append(result.provenance)
        timings.append(("total", time.monotonic() - t0))

        # 4. One result with every stage's provenance and timing.
        yield Event(result=orchestrator_pb2.RemoveObjectsResult(
            image=result.image, mask=result.mask, instances=instances, stages=stages,
            timings=[common_pb2.StageTiming(stage=s, duration=convert.duration(t))
                     for s, t in timings]))
