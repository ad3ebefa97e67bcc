"""The request-bytes interceptor around a real handler: what it hands the servicer, and
that a large request (and only a large one) hands its memory back when the call is done,
whether it came over gRPC (bytes the interceptor parsed) or over HTTP (a parsed message)."""

from __future__ import annotations

import grpc
import pytest
from mic2e.v1 import common_pb2, object_clear_pb2
from mic2e_services.runtime import memory
from mic2e_services.runtime.request_bytes import RequestBytes

pytestmark = pytest.mark.asyncio

METHOD = "/mic2e.v1.ObjectClearService/Clear"


class _Details(grpc.HandlerCallDetails):
    method = METHOD
    invocation_metadata = ()


async def wrapped(seen: list, large_bytes: int) -> grpc.RpcMethodHandler:
    async def servicer(request, context):
        seen.append(request)
        yield object_clear_pb2.ClearResponse()

    inner = grpc.unary_stream_rpc_method_handler(
        servicer, request_deserializer=object_clear_pb2.ClearRequest.FromString,
        response_serializer=object_clear_pb2.ClearResponse.SerializeToString)

    async def continuation(details):
        return inner

    return await RequestBytes(large_bytes=large_bytes).intercept_service(continuation,
                                                                          _Details())


def request(n_bytes: int) -> object_clear_pb2.ClearRequest:
    return object_clear_pb2.ClearRequest(image=common_pb2.Image(data=b"x" * n_bytes),
                                         label="dog")


@pytest.mark.parametrize("over_http", [False, True], ids=["grpc-bytes", "http-message"])
async def test_only_a_large_request_hands_its_memory_back(monkeypatch, over_http):
    trims = []
    monkeypatch.setattr(memory, "trim_soon", lambda: trims.append(1))
    seen: list = []
    handler = await wrapped(seen, large_bytes=1000)
    for size in (10, 5000, 999 - 20):
        message = request(size)
        arrived = (message if over_http else
                   handler.request_deserializer(message.SerializeToString()))
        answers = [a async for a in handler.unary_stream(arrived, None)]
        assert len(answers) == 1
        # The servicer gets the message itself, never a wrapper.
        assert isinstance(seen[-1], object_clear_pb2.ClearRequest)
        assert seen[-1] == message
    assert len(trims) == 1  # the 5000-byte request alone
