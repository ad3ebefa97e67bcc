"""mic2e.v1.EditService: composes the model servers' calls. No model, no torch.

RemoveObjects streams, in order: Progress("segmentation"), the SegmentationResult as soon
as it is known, the object-clear server's per-step Progress passed through, then one
RemoveObjectsResult. ReplaceObjects likewise, with the FLUX server's Inpaint in place of
the removal (and a box target that needs no segmentation). The caller's deadline and
cancellation reach every downstream call; a failing stage ends the stream with that
stage's status code and an ErrorInfo naming it.
"""

from __future__ import annotations

import asyncio
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

from mic2e_services.api import flux as fx
from mic2e_services.api import object_clear as oc
from mic2e_services.api import segmentation as seg
from mic2e_services.errors import DownstreamError, InvalidArgument, NotFound
from mic2e_services.orchestrator import convert as msgs
from mic2e_services.orchestrator.downstream import Downstream
from mic2e_services.runtime import convert
from mic2e_services.runtime.images import LRU, check_reference
from mic2e_services.runtime.status import rpc, stream_rpc

SERVICE_NAME = "mic2e.v1.EditService"


#: Encoded images kept for SHA-256 references, MiB (MIC2E_IMAGE_CACHE_MB's default here).
IMAGE_CACHE_MB = 256


class EditServicer(orchestrator_pb2_grpc.EditServiceServicer):
    """See the module docstring and orchestrator.proto."""

    def __init__(self, segmentation: Downstream, object_clear: Downstream, flux: Downstream,
                 *, inpaint: Downstream | None = None,
                 image_cache_bytes: int = IMAGE_CACHE_MB * 2**20,
                 max_image_pixels: int = codecs.DEFAULT_MAX_PIXELS) -> None:
        self.segmentation = segmentation
        self.object_clear = object_clear
        self.flux = flux
        #: Where Inpaint / ReplaceObjects go: the flux servers, or ones of their own (e.g.
        #: holding a fill checkpoint, which cannot Generate).
        self.inpaint = inpaint or flux
        self._seg = segmentation_pb2_grpc.SegmentationServiceStub(segmentation.channel)
        self._clear = object_clear_pb2_grpc.ObjectClearServiceStub(object_clear.channel)
        self._flux = flux_pb2_grpc.FluxServiceStub(flux.channel)
        self._inpaint = flux_pb2_grpc.FluxServiceStub(self.inpaint.channel)
        # Encoded bytes by SHA-256, so callers may refer to an image they sent before;
        # bounded in bytes, and only images a model server accepted work on (`_keep`).
        self._images: LRU[str, bytes] = LRU(image_cache_bytes)
        #: The image limit for the pictures this server decodes (a whole picture built
        #: from a model server's patch; the model server has checked the same bytes).
        self.max_image_pixels = max_image_pixels

    def _image(self, image: common_pb2.Image, field: str = "image") -> tuple[str, bytes]:
        """(sha256, bytes) of the caller's image; the orchestrator never decodes it."""
        source = image.WhichOneof("source")
        if source == "data":
            data = image.data  # each read of a bytes field is a copy: a 12 MP JPEG is 3 MB
            if not data:
                raise InvalidArgument(f"{field}.data", "image data is empty")
            return codecs.sha256_hex(data), data
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

        response = await self.segmentation.unary(seg.STAGE, data, call, sha=sha)
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
                fx.STAGE, None,
                lambda _: self._flux.Generate(request, timeout=context.time_remaining(),
                                              metadata=self.flux.metadata)):
            yield msg

    @stream_rpc
    async def Inpaint(self, request: flux_pb2.InpaintRequest,
                      context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[flux_pb2.InpaintResponse]:
        sha, data = self._image(request.image)

        def call(image: common_pb2.Image) -> Any:
            forwarded = flux_pb2.InpaintRequest()
            forwarded.CopyFrom(request)
            forwarded.image.CopyFrom(image)
            return self._inpaint.Inpaint(forwarded, timeout=context.time_remaining(),
                                         metadata=self.inpaint.metadata)

        kept = False
        async for msg in self.inpaint.stream(fx.INPAINT_STAGE, data, call, sha=sha):
            if not kept:  # the server accepted the work: its image may be referred to
                self._keep(sha, data)
                kept = True
            yield msg

    # -- composition -----------------------------------------------------------------------
    async def _segmentation_stage(
            self, request: orchestrator_pb2.RemoveObjectsRequest
            | orchestrator_pb2.ReplaceObjectsRequest, data: bytes, sha: str,
            context: grpc.aio.ServicerContext, rename: Callable[[str], str], t0: float,
            done: _Stage) -> AsyncIterator[common_pb2.Progress
                                           | orchestrator_pb2.SegmentationResult]:
        """Segment a text or prompt target: Progress, the SegmentationResult (as soon as
        it is known), Progress; what it found goes into `done`. NOT_FOUND when a text
        target finds nothing."""
        yield common_pb2.Progress(stage=seg.STAGE, step=0, total_steps=1,
                                  elapsed=convert.duration(time.monotonic() - t0))
        t_seg = time.monotonic()
        if request.WhichOneof("target") == "text":
            found = await self.segmentation.unary(
                seg.STAGE, data, lambda img: self._seg.SegmentByText(
                    msgs.text_request(request, img), timeout=context.time_remaining(),
                    metadata=self.segmentation.metadata), rename, sha=sha)
            done.instances = list(found.instances)
        else:
            found = await self.segmentation.unary(
                seg.STAGE, data, lambda img: self._seg.SegmentByPrompt(
                    msgs.prompt_request(request, img), timeout=context.time_remaining(),
                    metadata=self.segmentation.metadata), rename, sha=sha)
            done.instances = [found.best]
        self._keep(sha, data)
        done.timings.append((seg.STAGE, time.monotonic() - t_seg))
        done.stages.append(found.provenance)
        yield common_pb2.Progress(stage=seg.STAGE, step=1, total_steps=1,
                                  elapsed=convert.duration(time.monotonic() - t0))
        yield orchestrator_pb2.SegmentationResult(instances=done.instances,
                                                  provenance=found.provenance)
        if not done.instances:
            raise NotFound(f"no instance of {request.text.text!r} found",
                           reason="NO_INSTANCES", metadata={"text": request.text.text})

    async def _model_stage(self, server: Downstream, stage: str, data: bytes, sha: str,
                           call: Callable[[common_pb2.Image], Any],
                           rename: Callable[[str], str], done: _Stage, t0: float
                           ) -> AsyncIterator[common_pb2.Progress]:
        """The last stage of a composed call, streamed: its per-step Progress passed on,
        its result (and the stage's and the total's timing) into `done`."""
        started = time.monotonic()
        result, kept = None, False
        async for msg in server.stream(stage, data, call, rename, sha=sha):
            if not kept:  # the server accepted the work: its image may be referred to
                self._keep(sha, data)
                kept = True
            if msg.WhichOneof("event") == "progress":
                yield msg.progress
            else:
                result = msg.result
        if result is None:  # a server that breaks the stream contract, not the caller's fault
            raise DownstreamError(stage, "UNAVAILABLE", "the stream ended without a result",
                                  {"server": server.address})
        done.result = result
        done.timings += [(stage, time.monotonic() - started), ("total", time.monotonic() - t0)]

    @stream_rpc
    async def RemoveObjects(self, request: orchestrator_pb2.RemoveObjectsRequest,
                            context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[orchestrator_pb2.RemoveObjectsResponse]:
        async for event in self._masked_edit(
                request, context, msgs.check, orchestrator_pb2.RemoveObjectsResponse,
                orchestrator_pb2.RemoveObjectsResult, request.clear_options,
                self.object_clear, oc.STAGE,
                lambda img, masks: self._clear.Clear(
                    msgs.clear_request(request, img, masks),
                    timeout=context.time_remaining(), metadata=self.object_clear.metadata)):
            yield event

    @stream_rpc
    async def ReplaceObjects(self, request: orchestrator_pb2.ReplaceObjectsRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[orchestrator_pb2.ReplaceObjectsResponse]:
        async for event in self._masked_edit(
                request, context, msgs.check_replace, orchestrator_pb2.ReplaceObjectsResponse,
                orchestrator_pb2.ReplaceObjectsResult, request.inpaint_options,
                self.inpaint, fx.INPAINT_STAGE,
                lambda img, masks: self._inpaint.Inpaint(
                    msgs.inpaint_request(request, img, masks),
                    timeout=context.time_remaining(), metadata=self.inpaint.metadata),
                replace=True, extra=lambda r: {"prompt_truncated": r.prompt_truncated,
                                               "truncated_prompt": r.truncated_prompt}):
            yield event

    async def _masked_edit(self, request: Any, context: grpc.aio.ServicerContext,
                           check: Callable[[Any], None], Event: Any, Result: Any,
                           options: Any, server: Downstream, stage: str,
                           call: Callable[[common_pb2.Image, list[common_pb2.Mask]], Any],
                           replace: bool = False,
                           extra: Callable[[Any], dict[str, Any]] = lambda r: {}
                           ) -> AsyncIterator[Any]:
        """The one composed flow of RemoveObjects and ReplaceObjects (`replace`): the
        region (masks, a box, or segmentation), then the edit on `server` (`call`), then
        one result (`Result`, with `extra` fields taken from the model server's)."""
        t0 = time.monotonic()
        target = request.WhichOneof("target") or ""
        rename = msgs.caller_field(target, replace=replace)

        # 1. Check the request and take the image (bytes or a reference we hold).
        check(request)
        sha, data = self._image(request.image)
        done = _Stage()

        # 2. The region: ready masks, a box, or what segmentation finds (streamed at once).
        if target == "masks":
            masks = list(request.masks.masks)
        elif target == "box":
            masks = [msgs.box_mask(request.box, data)]
        else:
            async for event in self._segmentation_stage(request, data, sha, context, rename,
                                                        t0, done):
                yield _event(Event, event)
            masks = msgs.found_masks(done.instances)

        # 3. The edit: pass the per-step progress through, keep the result.
        async for progress in self._model_stage(server, stage, data, sha,
                                                lambda img: call(img, masks), rename, done, t0):
            yield Event(progress=progress)
        result = done.result

        # 4. One result with every stage's provenance and timing: the picture as the
        #    caller asked (the patch, or the whole picture built here).
        picture = await self._picture(result, data, options, done)
        yield Event(result=Result(
            mask=result.mask, instances=done.instances,
            stages=[*done.stages, result.provenance], timings=done.stage_timings(),
            **extra(result), **picture))

    async def _picture(self, result: Any, data: bytes, options: Any, done: _Stage
                       ) -> dict[str, Any]:
        """The composed result's picture fields, as `options.output_patch` asks; the time
        it took to build a whole picture is reported as the stage "whole_picture"."""
        started = time.monotonic()
        fields = await asyncio.to_thread(
            msgs.edit_fields, result, data, patch=options.output_patch,
            fmt=options.output_format, max_pixels=self.max_image_pixels)
        if not options.output_patch:
            done.timings.insert(-1, ("whole_picture", time.monotonic() - started))
        return fields


class _Stage:
    """What the stages of one composed call found so far."""

    def __init__(self) -> None:
        self.result: Any = None  # the last stage's
        self.instances: list[common_pb2.Instance] = []
        self.stages: list[common_pb2.Provenance] = []
        self.timings: list[tuple[str, float]] = []

    def stage_timings(self) -> list[common_pb2.StageTiming]:
        return [common_pb2.StageTiming(stage=s, duration=convert.duration(t))
                for s, t in self.timings]


def _event(Event: type, item: common_pb2.Progress | orchestrator_pb2.SegmentationResult
           ) -> Any:
    """A segmentation-stage item as the composed call's event."""
    if isinstance(item, common_pb2.Progress):
        return Event(progress=item)
    return Event(segmentation=item)
