"""The gRPC handlers behind the HTTP port (see `http`): each Connect call runs the very
method handler the gRPC server registered (`HandlerRecorder`), through the same
interceptors, with a servicer context that maps the HTTP call's headers, deadline and
disconnection onto what a gRPC handler reads (`HttpServicerContext`); a status it ends
with becomes a Connect error, `google.rpc` details included; a body that does not parse is
INVALID_ARGUMENT naming its format (`_CheckedCodec`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger(__name__)

#: Headers that belong to HTTP or to the RPC protocol, not to the call's metadata.
_NOT_METADATA = frozenset({
    "host", "content-type", "content-length", "content-encoding", "accept", "accept-encoding",
    "connection", "keep-alive", "te", "transfer-encoding", "upgrade", "origin", "referer",
    "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "x-grpc-web", "x-user-agent",
})


class HttpServicerContext:
    """What a gRPC handler (and its interceptors) read from `grpc.aio.ServicerContext`,
    for a call that came over HTTP."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], peer: str,
                 deadline: float | None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline  # time.monotonic()
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        #: Set when the caller went away or its deadline passed.
        self.cancelled_because: str | None = None

    # What the handlers and interceptors call.
    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancelled(self) -> bool:
        return self.cancelled_because is not None

    def done(self) -> bool:
        return self.cancelled_because is not None

    def is_active(self) -> bool:
        return self.cancelled_because is None

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    async def send_initial_metadata(self, metadata: object) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def set_compression(self, compression: object) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise _Aborted

    # The outcome, for the HTTP side.
    def error(self) -> ConnectError | None:
        """The status the handler ended with as a Connect error (None: OK)."""
        if self._code is None or self._code == grpc.StatusCode.OK:
            return None
        details: list[Any] = []
        for key, value in self._trailing:
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                details = list(status_pb2.Status.FromString(value).details)
        return ConnectError(Code[self._code.name.replace("CANCELLED", "CANCELED")],
                            self._details, details)


class _Metadatum(NamedTuple):
    """One metadata entry as grpc gives them: a (key, value) pair that also has `.key` and
    `.value` (OpenTelemetry's server interceptor reads those)."""

    key: str
    value: str | bytes


class _Aborted(Exception):
    """`context.abort()` was called: the status is in the context."""


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


Handlers = Mapping[str, grpc.RpcMethodHandler]


class HandlerRecorder:
    """Stands in for the `grpc.aio.Server` in `add_*Servicer_to_server(servicer, server)`:
    passes every registration on to the real server and keeps the method handlers, so the
    HTTP port runs exactly what the gRPC port runs."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        #: "/package.Service/Method" -> its handler, for every mic2e service.
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service, handlers)
        if service.startswith("mic2e."):
            self.services.append(service)
            self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})


def _snake(name: str) -> str:
    """A method's name as the Connect plugin writes it in Python (SegmentByText ->
    segment_by_text)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class _Service:
    """The object a generated Connect application calls (`svc.remove_objects(request,
    ctx)`): each method runs the gRPC handler of the same RPC through the interceptors."""

    def __init__(self, service: str, handlers: Handlers,
                 interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:
        self._service = service
        self._handlers = handlers
        self._interceptors = interceptors
        methods = descriptor_pool.Default().FindServiceByName(service).methods
        self._by_snake = {_snake(m.name): m for m in methods}

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        method = self._by_snake.get(attr)
        if method is None:
            raise AttributeError(attr)
        path = f"/{self._service}/{method.name}"
        if method.server_streaming:
            return lambda request, ctx: self._stream(path, request, ctx)
        return lambda request, ctx: self._unary(path, request, ctx)

    async def _handler(self, path: str, metadata: tuple[tuple[str, str | bytes], ...]
                       ) -> grpc.RpcMethodHandler:
        """The registered handler as the interceptors hand it on, outermost first (as
        grpc.aio applies a server's interceptors)."""
        details = _CallDetails(path, metadata)

        async def call(index: int, call_details: grpc.HandlerCallDetails
                       ) -> grpc.RpcMethodHandler:
            if index == len(self._interceptors):
                return self._handlers[call_details.method]
            return await self._interceptors[index].intercept_service(
                lambda d: call(index + 1, d), call_details)

        return await call(0, details)

    async def _unary(self, path: str, request: Any, ctx: Any) -> Any:
        with _no_internals(path):
            return await self._unary_call(path, request, ctx)

    async def _stream(self, path: str, request: Any, ctx: Any) -> AsyncIterator[Any]:
        with _no_internals(path):
            async for item in self._stream_call(path, request, ctx):
                yield item

    async def _unary_call(self, path: str, request: Any, ctx: Any) -> Any:
        context = _context(ctx)
        handler = await self._handler(path, context.invocation_metadata())
        async with _deadline(context):
            try:
                response = await handler.unary_unary(request, context)
            except _Aborted:
                response = None
        if (error := context.error()) is not None:
            raise error
        if response is None:
            raise ConnectError(Code.INTERNAL, "the handler returned no response")
        return response

    async def _stream_call(self, path: str, request: Any, ctx: Any) -> AsyncIterator[Any]:
        context = _context(ctx)
        handler = await self._handler(path, context.invocation_metadata())
        responses = handler.unary_stream(request, context)
        try:
            async with _deadline(context):
                async for item in responses:
                    yield item
        except _Aborted:
            pass
        finally:
            await responses.aclose()
        if (error := context.error()) is not None:
            raise error


@contextlib.contextmanager
def _no_internals(path: str) -> Iterator[None]:
    """An unexpected error is logged with its traceback and reaches the caller as INTERNAL
    with no text (connectrpc would send the exception's text as UNKNOWN)."""
    try:
        yield
    except (ConnectError, asyncio.CancelledError, GeneratorExit):
        raise
    except Exception:
        log.exception("unexpected error in %s over HTTP", path)
        raise ConnectError(Code.INTERNAL, "internal error") from None


def _context(ctx: Any) -> HttpServicerContext:
    metadata: list[tuple[str, str | bytes]] = []
    for key, value in ctx.request_headers().allitems():
        key = key.lower()
        if key in _NOT_METADATA or key.startswith(("connect-", ":")):
            continue
        if key.endswith("-bin"):
            try:
                metadata.append(_Metadatum(key, base64.b64decode(value + "=" * (-len(value) % 4))))
            except ValueError:
                raise ConnectError(Code.INVALID_ARGUMENT,
                                   f"header {key}: not base64") from None
        else:
            metadata.append(_Metadatum(key, value))
    remaining_ms = ctx.timeout_ms()
    deadline = None if remaining_ms is None else time.monotonic() + remaining_ms / 1000
    client = ctx.client_address() or "unknown:0"
    return HttpServicerContext(tuple(metadata), f"ipv4:{client}", deadline)


class _deadline:
    """Within the block, the call's deadline cancels the work (as grpc cancels a handler
    whose deadline passed) and ends the call with DEADLINE_EXCEEDED."""

    def __init__(self, context: HttpServicerContext) -> None:
        self._context = context
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        remaining = self._context.time_remaining()
        if remaining is None:
            return
        if remaining <= 0:
            raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(remaining, self._expire)

    def _expire(self) -> None:
        self._context.cancelled_because = "deadline"
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool:
        if self._timer is not None:
            self._timer.cancel()
        if kind is asyncio.CancelledError and self._context.cancelled_because == "deadline":
            assert self._task is not None
            self._task.uncancel()
            raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        return False


class _CheckedCodec:
    """One of connectrpc's codecs, whose parse errors become what a gRPC caller gets for
    bytes that are no message (`RequestBytes`): INVALID_ARGUMENT naming `request`, not
    the library's UNKNOWN with the parser's text."""

    def __init__(self, codec: Any, wire: str) -> None:
        self._codec = codec
        self._wire = wire

    def name(self) -> str:
        return self._codec.name()

    def encode(self, message: Any) -> bytes:
        return self._codec.encode(message)

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        try:
            return self._codec.decode(data, message)
        except Exception as exc:
            name = message.DESCRIPTOR.full_name
            why = f": {exc}" if self._wire == "JSON" else ""
            description = f"the bytes sent are not a {name} message ({self._wire}){why}"
            raise ConnectError(Code.INVALID_ARGUMENT, f"request: {description}", [
                error_details_pb2.BadRequest(field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="request", description=description)])]) from None


def _check_parsing() -> None:
    """Wrap connectrpc's codecs once. Its codecs are a module registry with no public
    hook (connect-python 0.9.0, pinned); the bad-input suite over HTTP checks this."""
    from connectrpc import _codec

    for key, codec in list(_codec._codecs.items()):
        if not isinstance(codec, _CheckedCodec):
            wire = "JSON" if "json" in key else "protobuf wire format"
            _codec._codecs[key] = _CheckedCodec(codec, wire)


def connect_applications(recorder: HandlerRecorder,
                         interceptors: Sequence[grpc.aio.ServerInterceptor]) -> list[Any]:
    """One generated Connect ASGI application per mic2e service the server registered."""
    _check_parsing()
    apps = []
    for service in recorder.services:
        proto = descriptor_pool.Default().FindServiceByName(service).file.name
        module = importlib.import_module(proto.removesuffix(".proto").replace("/", ".")
                                         + "_connect")
        app_class = getattr(module, f"{service.rsplit('.', 1)[1]}ASGIApplication")
        # No compression: a compressed body could expand past the message limit after the
        # bounded read, and browsers do not compress requests anyway.
        apps.append(app_class(_Service(service, recorder.handlers, interceptors),
                              compressions=()))
    return apps
