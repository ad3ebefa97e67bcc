"""What every server does with a request's raw bytes, around its servicer (an interceptor):

- bytes that do not parse as the method's message never reach the servicer: INVALID_ARGUMENT
  with a plain message (BadRequest naming "request"), where grpc would answer UNKNOWN with
  the parser's class names and log a traceback for each; logged as one WARNING line, no
  traceback, at most one per `log_every_s` whoever sends them;
- after a request of `large_bytes` or more, the memory it took is handed back to the
  system (`memory.trim_soon`), so one caller's upload does not stay in the process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mic2e_services.errors import InvalidArgument
from mic2e_services.runtime import memory
from mic2e_services.runtime.status import end_with, failure

log = logging.getLogger(__name__)


class _Undecodable:
    """What the guarded deserializer hands the server instead of raising."""

    def __init__(self, size: int) -> None:
        self.size = size


class _Received:
    """A parsed request and the number of bytes it came in: measuring a parsed message
    again (`ByteSize`) costs milliseconds for a 12 MP photo, in every process it crosses."""

    __slots__ = ("message", "size")

    def __init__(self, message: Any, size: int) -> None:
        self.message = message
        self.size = size


def _opened(request: Any) -> tuple[Any, int | None]:
    """(message, bytes received); a message handed in already parsed (the HTTP front
    calls the handler itself) has no byte count yet."""
    if isinstance(request, _Received):
        return request.message, request.size
    return request, None


class RequestBytes(grpc.aio.ServerInterceptor):
    """See the module docstring. The innermost interceptor: the others (metrics, traces)
    see a refused call, and count its status, like any other."""

    def __init__(self, log_every_s: float = 10.0, large_bytes: int = 1 << 20) -> None:
        self.log_every_s = log_every_s
        self.large_bytes = large_bytes
        self._lock = threading.Lock()
        self._last_logged = -math.inf
        self._unlogged = 0
        #: Requests refused so far (for tests).
        self.refused = 0

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.stream_unary:  # (no such method here)
            return handler
        parse = handler.request_deserializer
        message = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        # The message's name, unless it is borrowed from another package (reflection v1).
        package = message.full_name.rpartition(".")[0] if message is not None else None
        name = (message.full_name if package and details.method.startswith(f"/{package}.")
                else "request")

        def deserialize(data: bytes) -> Any:
            try:
                return _Received(parse(data) if parse is not None else data, len(data))
            except Exception:  # the parser's own error says nothing to the caller
                return _Undecodable(len(data))

        def refusal(request: _Undecodable) -> grpc.Status:
            self._log(details.method, request.size)
            return failure(InvalidArgument("request", f"the bytes sent are not a {name} "
                                                      "message (protobuf wire format)"))

        if handler.stream_stream:  # reflection: each message of the stream is checked
            inner_bidi = handler.stream_stream

            async def bidi(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[Any]:
                async def checked() -> AsyncIterator[Any]:
                    async for request in requests:
                        if isinstance(request, _Undecodable):
                            end_with(context, refusal(request))
                            return  # the servicer sees the stream end
                        message, size = _opened(request)
                        self._after(message, size)
                        yield message

                async for item in inner_bidi(checked(), context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                bidi, request_deserializer=deserialize,
                response_serializer=handler.response_serializer)
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    end_with(context, refusal(request))
                    return None
                message, size = _opened(request)
                try:
                    return await inner(message, context)
                finally:
                    self._after(message, size)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=deserialize,
                response_serializer=handler.response_serializer)
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                end_with(context, refusal(request))
                return
            message, size = _opened(request)
            try:
                async for item in inner_stream(message, context):
                    yield item
            finally:
                self._after(message, size)

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=deserialize,
            response_serializer=handler.response_serializer)

    def _after(self, request: Any, size: int | None) -> None:
        """A call is done with `request` (`size` bytes, when known): if it was large,
        hand its memory back."""
        if size is None:
            size = len(request) if isinstance(request, bytes) else request.ByteSize()
        if size >= self.large_bytes:
            memory.trim_soon()

    def _log(self, method: str, size: int) -> None:
        """One WARNING line, not more than one per `log_every_s` whoever sends them: a
        caller's junk must not fill the log for everyone else."""
        with self._lock:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_logged < self.log_every_s:
                self._unlogged += 1
                return
            also, self._unlogged, self._last_logged = self._unlogged, 0, now
        more = f" (and {also} more since the last such line)" if also else ""
        log.warning("refused %d undecodable request bytes to %s%s", size, method, more)
