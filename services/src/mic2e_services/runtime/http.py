"""The HTTP port: Connect (JSON and binary) and gRPC-Web beside gRPC, same handlers.

Every server can also listen on an HTTP port (`http_port`), where the Connect project's
Python runtime (`connectrpc`, an ASGI application generated from the same protos, served
by Hypercorn over HTTP/1.1 and HTTP/2) takes the calls. No route or message is defined
twice: each call runs the very method handler the gRPC server registered, through the
same interceptors (bearer tokens, traces, metrics, request bytes), with a servicer
context that maps the HTTP call's headers, deadline (`Connect-Timeout-Ms`,
`grpc-timeout`) and disconnection onto what a gRPC handler reads. A status a handler ends
with comes back as Connect's error JSON (or gRPC-Web trailers), its `google.rpc`
details included.

The handlers' side is `http_handlers`. Around the Connect application, this module's
one ASGI layer: request bodies are read here, bounded by the message limit before anything
is parsed; a client that goes away cancels its call (the model stops at its next step);
CORS for the origins allowed by setting (none by default: same origin only); and the
playground page's static files at `/`.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import socket
from collections.abc import (
    Awaitable,
    Callable,
    Sequence,
)
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Room for a request's framing (envelopes, JSON punctuation and field names) over the
#: message limit.
_BODY_SLACK = 64 * 1024

#: What a browser may send and read across origins (the Connect and gRPC-Web protocols'
#: own headers, bearer tokens and trace context).
_CORS_ALLOW_HEADERS = ("content-type, connect-protocol-version, connect-timeout-ms, "
                       "connect-accept-encoding, connect-content-encoding, grpc-timeout, "
                       "x-grpc-web, x-user-agent, authorization, traceparent, tracestate")
_CORS_EXPOSE_HEADERS = ("grpc-status, grpc-message, grpc-status-details-bin, "
                        "content-encoding, connect-content-encoding")


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]


class HttpFront:
    """The ASGI application of the HTTP port: routes each RPC path to its Connect
    application, bounds request bodies, cancels calls whose client left, answers CORS and
    serves the playground's static files."""

    def __init__(self, apps: Sequence[Any], *, max_message_bytes: int,
                 cors_origins: Sequence[str] = (), static_dir: Path | None = None) -> None:
        self._apps = {app.path: app for app in apps}
        self._max_message_bytes = max_message_bytes
        self._cors_origins = {o.rstrip("/") for o in cors_origins}
        self._static_dir = static_dir.resolve() if static_dir is not None else None

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        origin = headers.get("origin")
        extra: list[tuple[bytes, bytes]] = []
        if origin is not None and self._allowed(origin):
            extra = [(b"access-control-allow-origin", origin.encode("latin-1")),
                     (b"vary", b"origin"),
                     (b"access-control-expose-headers", _CORS_EXPOSE_HEADERS.encode())]
        if scope["method"] == "OPTIONS":
            await self._preflight(send, extra)
            return
        service = scope["path"].rsplit("/", 1)[0]
        app = self._apps.get(service)
        if app is None:
            await self._static(scope, send, extra)
            return
        await self._call(app, scope, receive, _with_headers(send, extra), headers)

    def _allowed(self, origin: str) -> bool:
        return "*" in self._cors_origins or origin.rstrip("/") in self._cors_origins

    async def _preflight(self, send: Callable[[dict], Awaitable[None]],
                         extra: list[tuple[bytes, bytes]]) -> None:
        # Without an allowed origin the browser gets no CORS headers: same origin only.
        if extra:
            extra = [*extra, (b"access-control-allow-methods", b"POST, GET"),
                     (b"access-control-allow-headers", _CORS_ALLOW_HEADERS.encode()),
                     (b"access-control-max-age", b"7200")]
        await send({"type": "http.response.start", "status": 204, "headers": extra})
        await send({"type": "http.response.body", "body": b""})

    async def _call(self, app: Any, scope: dict, receive: Callable[[], Awaitable[dict]],
                    send: Callable[[dict], Awaitable[None]], headers: dict[str, str]) -> None:
        # The body, read here whole but never past the limit: a JSON body carries bytes
        # fields in base64 (4/3 of their size).
        json = "json" in headers.get("content-type", "")
        limit = (self._max_message_bytes * 4 // 3 if json else self._max_message_bytes
                 ) + _BODY_SLACK
        chunks, size = [], 0
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _discard(receive, int(declared))
            await _refuse(send, f"request body of {declared} bytes is over the limit of "
                                f"{limit} bytes")
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                chunks.clear()
                await _discard(receive, 4 * limit)
                await _refuse(send, f"request body is over the limit of {limit} bytes")
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        gone = asyncio.Event()

        async def replay() -> dict:
            nonlocal body
            if body is not None:
                out, body = {"type": "http.request", "body": body, "more_body": False}, None
                return out
            await gone.wait()
            return {"type": "http.disconnect"}

        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            # After the body, the next message is the client going away: the call is
            # cancelled, so the model stops at its next step (as a gRPC cancel does).
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await app(scope, replay, send)
        except (asyncio.CancelledError, Exception):
            if not gone.is_set():
                raise
            # The caller left: what the cancelled call raised on its way out (connectrpc
            # turns the cancel into an error it can no longer send) is no server error.
            if task.cancelling():
                task.uncancel()
            log.debug("HTTP client left %s; its call was cancelled", scope["path"])
        finally:
            watcher.cancel()

    async def _static(self, scope: dict, send: Callable[[dict], Awaitable[None]],
                      extra: list[tuple[bytes, bytes]]) -> None:
        path = scope["path"]
        target = None
        if self._static_dir is not None and scope["method"] in ("GET", "HEAD"):
            candidate = (self._static_dir / (path.lstrip("/") or "index.html")).resolve()
            if candidate.is_relative_to(self._static_dir) and candidate.is_file():
                target = candidate
        if target is None:
            message = b"not found\n"
            if path in ("/", "/index.html"):  # the page itself: say how to get it
                message = (b"The playground page is not built here: run scripts/setup-ts.sh "
                           b"(it builds client-ts/dist/playground), or point "
                           b"MIC2E_PLAYGROUND_DIR at a built copy. The RPCs are served "
                           b"at /<service>/<method> (Connect, gRPC-Web).\n")
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain"), *extra]})
            await send({"type": "http.response.body", "body": message})
            return
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        body = target.read_bytes()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", kind.encode()), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache"), *extra]})
        await send({"type": "http.response.body",
                    "body": body if scope["method"] == "GET" else b""})


def _with_headers(send: Callable[[dict], Awaitable[None]], extra: list[tuple[bytes, bytes]]
                  ) -> Callable[[dict], Awaitable[None]]:
    if not extra:
        return send

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending


async def _discard(receive: Callable[[], Awaitable[dict]], at_most: int) -> None:
    """Read the rest of a refused body without keeping it (up to `at_most` bytes), so the
    client, still sending, reads the refusal instead of a reset connection."""
    seen = 0
    while seen <= at_most:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))


async def _refuse(send: Callable[[dict], Awaitable[None]], message: str) -> None:
    """RESOURCE_EXHAUSTED in Connect's error JSON (what a gRPC caller gets for a message
    over the limit), before the application sees any of it."""
    import json

    body = json.dumps({"code": "resource_exhausted", "message": message}).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), for Hypercorn (fd://)."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class HttpServer:
    """Hypercorn serving `app` on an already bound socket, in this event loop."""

    def __init__(self, app: ASGIApp, sock: socket.socket, *, certfile: str | None = None,
                 keyfile: str | None = None, client_ca_file: str | None = None) -> None:
        from hypercorn.config import Config

        self.app = app
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        self.scheme = "https" if certfile else "http"
        config = Config()
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.loglevel = "WARNING"
        if certfile:
            config.certfile, config.keyfile = certfile, keyfile
            if client_ca_file:
                import ssl

                config.ca_certs = client_ca_file
                config.verify_mode = ssl.CERT_REQUIRED
        self._config = config
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from hypercorn.asyncio import serve

        # Hypercorn closes the socket it serves: it gets a duplicate, this one stays ours.
        self._config.bind = [f"fd://{os.dup(self.socket.fileno())}"]
        self._task = asyncio.create_task(
            serve(self.app, self._config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]

    async def stop(self, grace_s: float) -> None:
        """Refuse new connections; let calls in flight finish within `grace_s`."""
        if self._task is None:
            self.socket.close()
            return
        # At least a moment: idle keep-alive connections close themselves on shutdown,
        # where a zero timeout cancels them (and asyncio then logs each cancelled one).
        self._config.graceful_timeout = max(grace_s, 1.0)
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, grace_s + 5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self.socket.close()
