"""The one call policy, shared by the clients and the orchestrator: image references and
the only retries.

An image goes over the wire once per server: later calls send only its SHA-256. A call
that fails before its first event is made once more when
- the server no longer holds the referenced image (it restarted, or the call reached
  another replica): NOT_FOUND with reason IMAGE_NOT_FOUND; again with the bytes;
- it never got to run: UNAVAILABLE (a connection closing as it aged, a replica going
  away); again as it was, to whichever server the channel picks now.
Each at most once; nothing that has started (sent an event) is ever retried.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from mic2e.codecs import sha256_hex
from mic2e.v1 import common_pb2

__all__ = ["ImageReferences", "is_lost_image"]

T = TypeVar("T")
#: What a call is made of: the image to send (None: a call without one) -> the call
#: (an awaitable, or an async iterable of events).
Call = Callable[[common_pb2.Image | None], T]


def is_lost_image(exc: BaseException) -> bool:
    """Whether `exc` is a server saying it does not hold a referenced image."""
    if not isinstance(exc, grpc.aio.AioRpcError) or exc.code() != grpc.StatusCode.NOT_FOUND:
        return False
    details = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    return b"IMAGE_NOT_FOUND" in details


def _retry_cause(exc: BaseException, tried: set[str], image: common_pb2.Image | None
                 ) -> str | None:
    """Why a call (with `image`) that failed before its first event may be made again
    ("bytes": send the image's bytes, "unavailable": as it was), recorded in `tried`;
    None: it may not."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return None
    if is_lost_image(exc) and image is not None and image.WhichOneof("source") == "sha256":
        cause = "bytes"
    elif exc.code() == grpc.StatusCode.UNAVAILABLE:
        cause = "unavailable"
    else:
        return None
    if cause in tried:
        return None
    tried.add(cause)
    return cause


class ImageReferences:
    """Which images one server (or one replicated address) already holds, and the calls
    made to it under the policy above."""

    def __init__(self, capacity: int = 256) -> None:
        self._known: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        #: Images sent as bytes / as references, calls made again (for tests and metrics).
        self.sent_bytes = 0
        self.sent_refs = 0
        self.retries = 0

    def image(self, data: bytes, *, digest: str | None = None, force_bytes: bool = False
              ) -> common_pb2.Image:
        """The `Image` to send: its reference when the server holds it, else the bytes.
        `digest`: the bytes' SHA-256 when the caller already has it (hashed once a call)."""
        digest = digest or sha256_hex(data)
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

    def _first(self, data: bytes | None, digest: str | None) -> common_pb2.Image | None:
        return None if data is None else self.image(data, digest=digest)

    def _again(self, data: bytes | None, image: common_pb2.Image | None, cause: str,
               digest: str | None) -> common_pb2.Image | None:
        """The image of the next attempt: the bytes after a lost reference, else the same."""
        self.retries += 1
        if cause == "bytes" and data:
            return self.image(data, digest=digest, force_bytes=True)
        return image

    async def unary(self, data: bytes | None, call: Call[Awaitable[T]], *,
                    digest: str | None = None) -> T:
        """`call(image)`, made again once per cause above (`digest`: as in `image`)."""
        tried: set[str] = set()
        image = self._first(data, digest)
        while True:
            try:
                return await call(image)
            except grpc.aio.AioRpcError as exc:
                cause = _retry_cause(exc, tried, image)
                if cause is None:
                    raise
            image = self._again(data, image, cause, digest)

    async def stream(self, data: bytes | None, call: Call[AsyncIterable[T]], *,
                     digest: str | None = None) -> AsyncIterator[T]:
        """The events of `call(image)`, made again once per cause above while no event has
        come. Leaving the iteration cancels the call."""
        tried: set[str] = set()
        image = self._first(data, digest)
        while True:
            responses = call(image)
            started = False
            try:
                async for message in responses:
                    started = True
                    yield message
                return
            except grpc.aio.AioRpcError as exc:
                cause = _retry_cause(exc, tried, image)
                if started or cause is None:
                    raise
            finally:
                cancel = getattr(responses, "cancel", None)
                if cancel is not None:
                    cancel()
            image = self._again(data, image, cause, digest)
