"""Device failures: out of memory keeps the server serving; a dead CUDA context makes it
NOT_SERVING and exit non-zero. A fake model raises the errors torch raises."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from mic2e.v1 import flux_pb2, flux_pb2_grpc
from mic2e_services import torch_device
from mic2e_services.runtime.server import build_server, serve
from mic2e_services.runtime.settings import ServerSettings
from mic2e_services.runtime.worker import ModelWorker

from tests.fakes import FakeModel
from tests.grpc_helpers import detail, drain, rich_status
from tests.service.test_runtime_server import SERVICE, FakeFluxServicer, health_status


class TorchFakeModel(FakeModel):
    translate_error = staticmethod(torch_device.translate_error)


def make_server(model):
    worker = ModelWorker(model, max_queue=4)
    return build_server(
        ServerSettings(host="127.0.0.1", port=0, grace_period_s=1),
        register=lambda s: flux_pb2_grpc.add_FluxServiceServicer_to_server(
            FakeFluxServicer(worker), s), service_names=[SERVICE], worker=worker)


def request(steps: int = 1) -> flux_pb2.GenerateRequest:
    return flux_pb2.GenerateRequest(prompt="abc", steps=steps)


async def test_out_of_memory_is_resource_exhausted_and_server_keeps_serving():
    model = TorchFakeModel(step_s=0.001)
    server, port = make_server(model)
    await server.start()
    await server.wait_ready(5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = flux_pb2_grpc.FluxServiceStub(channel)
        model.crash = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        call = stub.Generate(request())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(call)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = await rich_status(call)
        assert detail(status, error_details_pb2.ErrorInfo).reason == "OUT_OF_MEMORY"
        assert detail(status, error_details_pb2.RetryInfo) is not None
        events = await drain(stub.Generate(request()))
        assert events[-1].WhichOneof("event") == "result"
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    await server.stop(0)


async def test_dead_cuda_context_goes_not_serving_and_exits_nonzero():
    model = TorchFakeModel(step_s=0.001)
    server, port = make_server(model)
    serving = asyncio.create_task(serve(server))
    while server._bring_up is None:  # serve() starts it
        await asyncio.sleep(0.01)
    await server.wait_ready(5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = flux_pb2_grpc.FluxServiceStub(channel)
        model.crash = RuntimeError("CUDA error: an illegal memory access was encountered")
        call = stub.Generate(request())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert detail(await rich_status(call), error_details_pb2.ErrorInfo).reason == (
            "DEVICE_LOST")
    assert await asyncio.wait_for(serving, 10) == 3
    assert server.worker.fatal_error is not None


def test_translate_error_leaves_other_errors_alone():
    assert torch_device.translate_error(ValueError("x")) is None
    assert torch_device.translate_error(RuntimeError("shape mismatch")) is None
