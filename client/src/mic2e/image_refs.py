"""The one image-reference policy, shared by the clients and the orchestrator.

An image goes over the wire once per server: later calls send only its SHA-256. A server
that no longer holds it (it restarted, or the call reached another replica) answers
NOT_FOUND with reason IMAGE_NOT_FOUND before any event; the call is then made once more
with the bytes. Nothing else is ever retried here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from mic2e.codecs import sha256_hex
from mic2e.v1 import common_pb2

__all__ = ["ImageReferences", "cancelling", "is_lost_image"]

T = TypeVar("T")
#: What a call is made of: the image to send -> the call (awaitable, or async iterable).
Call = Callable[[common_pb2.Image], T]


def is_lost_image(exc: BaseException) -> bool:
    """Whether `exc` is a server saying it does not hold a referenced image."""
    if not isinstance(exc, grpc.aio.AioRpcError) or exc.code() != grpc.StatusCode.NOT_FOUND:
        return False
    details = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    return b"IMAGE_NOT_FOUND" in details


class ImageReferences:
    """Which images one server (or one replicated address) already holds."""

    def __init__(self, capacity: int = 256) -> None:
        self._known: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        #: Images sent as bytes / as references (for tests and metrics).
        self.sent_bytes = 0
        self.sent_refs = 0

    def image(self, data: bytes, *, force_bytes: bool = False) -> common_pb2.Image:
        """The `Image` to send: its reference when the server holds it, else the bytes."""
        digest = sha256_hex(data)
        if not force_bytes and digest in self._known:
            self._known.move_to_end(digest)
            self.sent_refs += 1
            return common_pb2.Image(sha256=digest)
        self._known[digest] = None
        self._known.move_to_end(digest)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
        self.sent_bytes += 1
        return common_pb2.Image(data=data)

    async def unary(self, data: bytes, call: Call[Awaitable[T]]) -> T:
        """`call(image)`, again with the bytes if the reference was lost."""
        try:
            return await call(self.image(data))
        except grpc.aio.AioRpcError as exc:
            if not is_lost_image(exc):
                raise
        return await call(self.image(data, force_bytes=True))

    async def stream(self, data: bytes, call: Call[AsyncIterable[T]]) -> AsyncIterator[T]:
        """The events of `call(image)`; made again with the bytes if the reference was
        lost before the first event. Leaving the iteration cancels the call."""
        for force_bytes in (False, True):
            responses = call(self.image(data, force_bytes=force_bytes))
            started = False
            try:
                async for message in responses:
                    started = True
                    yield message
                return
            except grpc.aio.AioRpcError as exc:
                if started or force_bytes or not is_lost_image(exc):
                    raise
            finally:
                cancel = getattr(responses, "cancel", None)
                if cancel is not None:
                    cancel()


async def cancelling(responses: AsyncIterable[T]) -> AsyncIterator[T]:
    """A streaming call's messages; a caller that stops iterating cancels the call."""
    try:
        async for message in responses:
            yield message
    finally:
        responses.cancel()  # type: ignore[attr-defined]
