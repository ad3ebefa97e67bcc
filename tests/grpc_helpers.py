"""Reading google.rpc details off a finished aio call, for tests."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2

M = TypeVar("M", bound=Message)


async def rich_status(call) -> status_pb2.Status:
    """The google.rpc.Status a server attached to a failed call (the call, or its error)."""
    metadata = call.trailing_metadata()
    if hasattr(metadata, "__await__"):
        metadata = await metadata
    raw = dict(metadata).get("grpc-status-details-bin")
    assert raw is not None, "the server sent no google.rpc details"
    return status_pb2.Status.FromString(raw)


def detail(status: status_pb2.Status, cls: type[M]) -> M | None:
    """The first detail of type `cls`, or None."""
    for packed in status.details:
        msg = cls()
        if packed.Unpack(msg):
            return msg
    return None


async def drain(call) -> list:
    """All messages of a streaming call (raises its error)."""
    return [m async for m in call]
