"""The shared server runtime over real gRPC on loopback, with a fake model.

A fake model is fine here: these tests are about health, reflection, status mapping,
deadlines, cancellation and shutdown, not about any model path.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mic2e.v1 import common_pb2, flux_pb2, flux_pb2_grpc
from mic2e_services.errors import InvalidArgument
from mic2e_services.runtime import convert
from mic2e_services.runtime.calls import Finished, run_streaming
from mic2e_services.runtime.server import build_server
from mic2e_services.runtime.settings import ServerSettings
from mic2e_services.runtime.status import stream_rpc
from mic2e_services.runtime.worker import ModelWorker, ProgressEvent

from tests.fakes import FakeModel, FakeRequest
from tests.grpc_helpers import detail, rich_status
from tests.http_channel import HttpChannel

#: Each runtime behaviour below holds over gRPC and over the HTTP port's two protocols.
TRANSPORTS = ["grpc", "connect", "grpc-web"]


@pytest.fixture
async def over(stack, request):
    """The channel of the test's transport (`transport` parameter) to the stack's server."""
    server, channel, _, _ = stack
    transport = getattr(request, "param", "grpc")
    if transport == "grpc":
        yield channel
        return
    http = HttpChannel(f"http://127.0.0.1:{server.http.port}", transport)
    yield http
    await http.close()


async def leave(call) -> None:
    """The caller goes away: a gRPC cancel, or an HTTP client closing its connection."""
    if hasattr(call, "aclose"):
        await call.aclose()
    else:
        call.cancel()

SERVICE = "mic2e.v1.FluxService"


class FakeFluxServicer(flux_pb2_grpc.FluxServiceServicer):
    """Maps Generate onto the fake model: steps -> FakeRequest(steps)."""

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker

    @stream_rpc
    async def Generate(self, request, context):
        if not request.prompt:
            raise InvalidArgument("prompt", "must not be empty")
        req = FakeRequest(len(request.prompt), key=None, steps=request.steps or 3)
        async for item in run_streaming(self.worker, req, context):
            if isinstance(item, ProgressEvent):
                yield flux_pb2.GenerateResponse(progress=convert.progress_to_proto(item))
            else:
                assert isinstance(item, Finished)
                yield flux_pb2.GenerateResponse(result=flux_pb2.GenerateResult(
                    image=common_pb2.EncodedImage(width=item.result)))


@pytest.fixture
async def stack():
    gate = threading.Event()
    model = FakeModel(step_s=0.05, max_batch_size=1, load_gate=gate)
    worker = ModelWorker(model, max_queue=1)
    settings = ServerSettings(host="127.0.0.1", port=0, grace_period_s=5, http_port=0)
    server, port = build_server(
        settings, register=lambda s: flux_pb2_grpc.add_FluxServiceServicer_to_server(
            FakeFluxServicer(worker), s), service_names=[SERVICE], worker=worker)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel, model, gate
    gate.set()
    await channel.close()
    await server.stop(0)


async def health_status(channel, service=""):
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_serving_only_after_model_loaded(stack):
    server, channel, model, gate = stack
    assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not model.loaded
    gate.set()
    await server.wait_ready(10)
    assert model.loaded
    assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING


def _reflection(channel: grpc.aio.Channel, version: str):
    """A ServerReflectionInfo call under `version` (v1alpha's messages: same wire format)."""
    return channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_and_describes_the_services(stack, version):
    _, channel, _, _ = stack
    responses = _reflection(channel, version)(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection")]))
    names, files = set(), []
    async for response in responses:
        assert not response.HasField("error_response"), response.error_response
        names |= {s.name for s in response.list_services_response.service}
        files += [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in
                  response.file_descriptor_response.file_descriptor_proto]
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    (v1,) = files  # v1 described like any other service (grpcurl describe works)
    assert (v1.package, v1.service[0].method[0].input_type) == (
        "grpc.reflection.v1", ".grpc.reflection.v1.ServerReflectionRequest")


async def test_calls_before_ready_are_unavailable(stack):
    _, channel, _, _ = stack
    stub = flux_pb2_grpc.FluxServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Generate(flux_pb2.GenerateRequest(prompt="x")):
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_bad_field_is_invalid_argument_with_field_violation(stack):
    server, channel, _, gate = stack
    gate.set()
    await server.wait_ready(10)
    call = flux_pb2_grpc.FluxServiceStub(channel).Generate(flux_pb2.GenerateRequest(prompt=""))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = detail(await rich_status(call), error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "prompt"


@pytest.mark.parametrize("over", TRANSPORTS, indirect=True)
async def test_stream_progress_then_result_and_queue_full(stack, over):
    server, _, model, gate = stack
    channel = over
    gate.set()
    await server.wait_ready(10)
    stub = flux_pb2_grpc.FluxServiceStub(channel)
    first = stub.Generate(flux_pb2.GenerateRequest(prompt="abc", steps=20))
    await asyncio.to_thread(model.started.wait, 5)
    second = stub.Generate(flux_pb2.GenerateRequest(prompt="abcd", steps=1))
    await asyncio.sleep(0.05)  # let `second` take the only queue slot
    third = stub.Generate(flux_pb2.GenerateRequest(prompt="x", steps=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in third:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = detail(await rich_status(third), error_details_pb2.RetryInfo)
    assert retry is not None and retry.retry_delay.ToNanoseconds() > 0
    events = [e async for e in first]
    assert [e.WhichOneof("event") for e in events] == ["progress"] * 20 + ["result"]
    assert [e.progress.step for e in events[:-1]] == list(range(1, 21))
    assert events[-1].result.image.width == 6
    assert [e.WhichOneof("event") async for e in second][-1] == "result"


@pytest.mark.parametrize("over", TRANSPORTS, indirect=True)
async def test_client_cancel_stops_the_model_within_one_step(stack, over):
    server, _, model, gate = stack
    channel = over
    gate.set()
    await server.wait_ready(10)
    call = flux_pb2_grpc.FluxServiceStub(channel).Generate(
        flux_pb2.GenerateRequest(prompt="abc", steps=100))
    async for event in call:
        if event.progress.step == 2:
            await leave(call)
            break
    steps_at_cancel = model.steps_run
    await asyncio.sleep(0.3)  # ~6 steps' time: a model that ignored the cancel would go on
    assert model.steps_run <= steps_at_cancel + 1
    # and the worker is free for the next call at once
    events = [e async for e in flux_pb2_grpc.FluxServiceStub(channel).Generate(
        flux_pb2.GenerateRequest(prompt="ab", steps=1), timeout=2)]
    assert events[-1].result.image.width == 4


@pytest.mark.parametrize("over", TRANSPORTS, indirect=True)
async def test_deadline_exceeded(stack, over):
    server, _, model, gate = stack
    channel = over
    gate.set()
    await server.wait_ready(10)
    call = flux_pb2_grpc.FluxServiceStub(channel).Generate(
        flux_pb2.GenerateRequest(prompt="abc", steps=100), timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED or (
        info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    await asyncio.sleep(0.2)
    steps = model.steps_run
    await asyncio.sleep(0.2)
    assert model.steps_run == steps, "work went on after the deadline"


async def test_graceful_stop_finishes_in_flight_and_refuses_new(stack):
    server, channel, model, gate = stack
    gate.set()
    await server.wait_ready(10)
    stub = flux_pb2_grpc.FluxServiceStub(channel)
    call = stub.Generate(flux_pb2.GenerateRequest(prompt="abc", steps=8))
    await asyncio.to_thread(model.started.wait, 5)
    stopping = asyncio.create_task(server.stop(grace_s=5))
    events = [e async for e in call]
    assert events[-1].WhichOneof("event") == "result"
    await stopping
    after = await health_status_or_none(channel)
    assert after in (None, health_pb2.HealthCheckResponse.NOT_SERVING)


async def health_status_or_none(channel):
    try:
        return await asyncio.wait_for(health_status(channel), 1)
    except (TimeoutError, grpc.aio.AioRpcError):
        return None


async def test_reflection_can_be_switched_off():
    settings = ServerSettings(host="127.0.0.1", port=0, reflection=False)
    server, port = build_server(settings, register=lambda s: None, service_names=[SERVICE])
    await server.start()
    await server.wait_ready(5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
                pass
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    await server.stop(0)
