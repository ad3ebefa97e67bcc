"""A `grpc.aio.Channel` look-alike that makes its calls over a server's HTTP port, for
tests: the generated gRPC stubs (and every test written against them) run unchanged over
the Connect protocol (binary) or gRPC-Web, and a failed call raises the same
`grpc.aio.AioRpcError` - its code, message and google.rpc details (as the
`grpc-status-details-bin` trailer) - that the gRPC call raises.

Written on httpx from the protocols' specifications (connectrpc.com/docs/protocol,
github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md), independently of the server's own
library, so the tests check the wire and not one implementation against itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
from google.protobuf import any_pb2
from google.rpc import status_pb2

#: Connect's error codes (snake_case) as gRPC's.
_CODES = {code.name.lower().replace("cancelled", "canceled"): code for code in grpc.StatusCode}


def _error(code: grpc.StatusCode, message: str, details: Sequence[any_pb2.Any] = ()
           ) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message)


def connect_error(body: bytes, http_status: int = 0) -> grpc.aio.AioRpcError:
    """A Connect error JSON ({"code", "message", "details": [{"type", "value"}]}); a body
    that is no JSON object is UNKNOWN, with the HTTP status and the body as message."""
    try:
        error = json.loads(body or b"{}")
        assert isinstance(error, dict)
    except (ValueError, AssertionError):
        return _error(grpc.StatusCode.UNKNOWN, f"HTTP {http_status}: {body[:200]!r}")
    details = [any_pb2.Any(type_url=f"type.googleapis.com/{d['type']}",
                           value=base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4)))
               for d in error.get("details", ())]
    return _error(_CODES.get(error.get("code", ""), grpc.StatusCode.UNKNOWN),
                  error.get("message", ""), details)


def _frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Complete envelopes (flags, payload) taken off the front of `buffer`."""
    out = []
    while len(buffer) >= 5:
        flags, size = struct.unpack(">BI", buffer[:5])
        if len(buffer) < 5 + size:
            break
        out.append((flags, bytes(buffer[5:5 + size])))
        del buffer[:5 + size]
    return out


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


class HttpChannel:
    """Calls a server's HTTP port as `protocol` ("connect" or "grpc-web"), binary.

    `metadata` given to a call goes as headers (binary values base64), `timeout` as
    Connect-Timeout-Ms (Connect) or grpc-timeout (gRPC-Web)."""

    def __init__(self, base_url: str, protocol: str = "connect", *, http2: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        assert protocol in ("connect", "grpc-web")
        self.protocol = protocol
        self.client = httpx.AsyncClient(base_url=base_url, timeout=120, http2=http2,
                                        http1=not http2, headers=headers or {})

    async def close(self) -> None:
        await self.client.aclose()

    def _headers(self, timeout: float | None, metadata: Any) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in metadata or ():
            headers[key] = (base64.b64encode(value).decode() if isinstance(value, bytes)
                            else value)
        if timeout is not None:
            if self.protocol == "connect":
                headers["connect-timeout-ms"] = str(max(1, int(timeout * 1000)))
            else:
                headers["grpc-timeout"] = f"{max(1, int(timeout * 1000))}m"
        return headers

    def unary_unary(self, method: str, request_serializer: Callable | None = None,
                    response_deserializer: Callable | None = None, **_: Any) -> Callable:
        async def call(request: Any, timeout: float | None = None, metadata: Any = None,
                       **__: Any) -> Any:
            data = request_serializer(request) if request_serializer else request
            if self.protocol == "connect":
                response = await self.client.post(
                    method, content=data, headers={"content-type": "application/proto",
                                                   **self._headers(timeout, metadata)})
                if response.status_code != 200:
                    raise connect_error(response.content, response.status_code)
                return response_deserializer(response.content) if response_deserializer \
                    else response.content
            messages = [m async for m in self._grpc_web(method, data, timeout, metadata)]
            assert len(messages) == 1, messages
            return response_deserializer(messages[0]) if response_deserializer \
                else messages[0]

        return call

    def unary_stream(self, method: str, request_serializer: Callable | None = None,
                     response_deserializer: Callable | None = None, **_: Any) -> Callable:
        def call(request: Any, timeout: float | None = None, metadata: Any = None,
                 **__: Any) -> AsyncIterator[Any]:
            data = request_serializer(request) if request_serializer else request
            stream = (self._connect_stream if self.protocol == "connect"
                      else self._grpc_web)(method, data, timeout, metadata)
            return _Call(stream, response_deserializer)

        return call

    async def _connect_stream(self, method: str, data: bytes, timeout: float | None,
                              metadata: Any) -> AsyncIterator[bytes]:
        headers = {"content-type": "application/connect+proto", **self._headers(timeout,
                                                                                 metadata)}
        async with self.client.stream("POST", method, content=envelope(data),
                                      headers=headers) as response:
            if response.status_code != 200:
                raise connect_error(await response.aread(), response.status_code)
            buffer = bytearray()
            async for chunk in response.aiter_bytes():
                buffer += chunk
                for flags, payload in _frames(buffer):
                    if flags & 0x02:  # end of stream: {} or {"error": ...}
                        end = json.loads(payload or b"{}")
                        if "error" in end:
                            raise connect_error(json.dumps(end["error"]).encode())
                        return
                    yield payload
        raise _error(grpc.StatusCode.UNKNOWN, "the stream ended without its end message")

    async def _grpc_web(self, method: str, data: bytes, timeout: float | None,
                        metadata: Any) -> AsyncIterator[bytes]:
        headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                   **self._headers(timeout, metadata)}
        async with self.client.stream("POST", method, content=envelope(data),
                                      headers=headers) as response:
            buffer = bytearray()
            trailers: dict[str, str] | None = None
            if "grpc-status" in response.headers:  # trailers-only response
                trailers = dict(response.headers)
            async for chunk in response.aiter_bytes():
                buffer += chunk
                for flags, payload in _frames(buffer):
                    if flags & 0x80:
                        trailers = dict(line.split(":", 1) for line in
                                        payload.decode().strip().split("\r\n") if line)
                        trailers = {k.strip().lower(): v.strip() for k, v in trailers.items()}
                    else:
                        yield payload
        if trailers is None:
            raise _error(grpc.StatusCode.UNKNOWN, "the stream ended without trailers")
        code = grpc.StatusCode.OK
        for candidate in grpc.StatusCode:
            if str(candidate.value[0]) == trailers.get("grpc-status", "2"):
                code = candidate
        if code != grpc.StatusCode.OK:
            raw = trailers.get("grpc-status-details-bin")
            details = (status_pb2.Status.FromString(
                base64.b64decode(raw + "=" * (-len(raw) % 4))).details if raw else [])
            raise _error(code, unquote(trailers.get("grpc-message", "")), details)


class _Call:
    """What a streaming stub call returns: an async iterator of messages (`read()` too).
    As a gRPC call, it starts at once: one task sends the request and queues what comes
    back, whether or not anyone reads yet."""

    def __init__(self, stream: AsyncIterator[bytes], parse: Callable | None) -> None:
        self._parse = parse
        self._error: grpc.aio.AioRpcError | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._run(stream))

    async def _run(self, stream: AsyncIterator[bytes]) -> None:
        try:
            async for payload in stream:
                await self._queue.put(("message", payload))
            await self._queue.put(("end", None))
        except Exception as exc:  # the call's error, raised to the reader
            await self._queue.put(("error", exc))

    def __aiter__(self) -> _Call:
        return self

    async def __anext__(self) -> Any:
        kind, value = await self._queue.get()
        if kind == "end":
            self._queue.put_nowait((kind, value))
            raise StopAsyncIteration
        if kind == "error":
            self._queue.put_nowait((kind, value))
            self._error = value
            raise value
        return self._parse(value) if self._parse else value

    def trailing_metadata(self) -> grpc.aio.Metadata:
        """After the call failed: its trailers (the google.rpc details among them)."""
        return self._error.trailing_metadata() if self._error else grpc.aio.Metadata()

    async def read(self) -> Any:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def aclose(self) -> None:
        """Leave the call: the HTTP connection closes under it."""
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
