"""The one call policy (`mic2e.image_refs`), shared by the clients and the orchestrator:
a call that fails before its first event is made once more when the server lost the
referenced image (with the bytes) or answered UNAVAILABLE (as it was); never after an
event, never twice for one cause.

A scripted server stands in for the model servers here: the policy is about what a
server answers, not about a model.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from mic2e.image_refs import ImageReferences
from mic2e.v1 import (
    common_pb2,
    flux_pb2,
    flux_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

IMAGE = b"\x89PNG pretend image bytes"


def lost_image() -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="IMAGE_NOT_FOUND", domain="mic2e.v1")
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="image not held")
    status.details.add().Pack(info)
    return rpc_status.to_status(status)


class Scripted(flux_pb2_grpc.FluxServiceServicer,
               segmentation_pb2_grpc.SegmentationServiceServicer):
    """Answers each call with the next scripted outcome: "ok", "unavailable", "lost"
    (IMAGE_NOT_FOUND), or "event, then unavailable" for streams. Records what it got."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.images: list[str] = []  # "data" or "sha256", per call

    async def _outcome(self, context: grpc.aio.ServicerContext) -> str:
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "max connection age")
        if outcome == "lost":
            await context.abort_with_status(lost_image())
        return outcome

    async def SegmentByText(self, request, context):
        self.images.append(request.image.WhichOneof("source"))
        await self._outcome(context)
        return segmentation_pb2.SegmentByTextResponse(image_width=7)

    async def Generate(self, request, context):
        self.images.append("none")
        outcome = await self._outcome(context)
        yield flux_pb2.GenerateResponse(progress=common_pb2.Progress(step=1, total_steps=1))
        if outcome == "event, then unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gone mid-stream")
        yield flux_pb2.GenerateResponse(result=flux_pb2.GenerateResult(prompt_truncated=True))


@pytest.fixture
async def scripted():
    server = grpc.aio.server()
    servicer = Scripted()
    flux_pb2_grpc.add_FluxServiceServicer_to_server(servicer, server)
    segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, channel
    await server.stop(0)


def segment(channel):
    stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
    return lambda image: stub.SegmentByText(segmentation_pb2.SegmentByTextRequest(
        image=image, text="dog"))


def generate(channel):
    stub = flux_pb2_grpc.FluxServiceStub(channel)
    return lambda _: stub.Generate(flux_pb2.GenerateRequest(prompt="x"))


async def test_unary_unavailable_is_made_again_once(scripted):
    server, channel = scripted
    refs = ImageReferences()
    server.script = ["unavailable"]
    assert (await refs.unary(IMAGE, segment(channel))).image_width == 7
    assert (server.images, refs.retries) == (["data", "data"], 1)
    server.script = ["unavailable", "unavailable"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await refs.unary(IMAGE, segment(channel))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.images[2:] == ["sha256", "sha256"], "once more, as it was: not twice"


async def test_each_cause_once_lost_image_then_unavailable(scripted):
    server, channel = scripted
    refs = ImageReferences()
    await refs.unary(IMAGE, segment(channel))  # the server has it now
    server.script = ["lost", "unavailable"]
    assert (await refs.unary(IMAGE, segment(channel))).image_width == 7
    assert server.images == ["data", "sha256", "data", "data"]
    assert refs.retries == 2


async def test_a_stream_is_made_again_only_before_its_first_event(scripted):
    server, channel = scripted
    refs = ImageReferences()
    server.script = ["unavailable"]
    events = [e.WhichOneof("event") async for e in refs.stream(None, generate(channel))]
    assert (events, len(server.images)) == (["progress", "result"], 2)
    server.script = ["event, then unavailable"]
    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in refs.stream(None, generate(channel)):
            seen.append(event.WhichOneof("event"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (seen, len(server.images)) == (["progress"], 3), "started work is never redone"


async def test_other_errors_are_never_retried(scripted):
    server, channel = scripted
    refs = ImageReferences()
    server.script = ["lost"]  # a lost reference we never sent: the bytes went, it is real
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await refs.unary(IMAGE, segment(channel))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.images == ["data"] and refs.retries == 0
