"""The orchestrator's view of one model server: a channel, image references, errors.

Each model server receives an image's bytes once; later calls send its SHA-256. Calls
follow the clients' one policy (`mic2e.image_refs`): made again once with the bytes when
the server lost the image, and once when the call failed UNAVAILABLE before its first
event (a connection closing as it aged). Failures become `DownstreamError`s naming the
stage.

`DownstreamHealth` keeps the orchestrator's grpc.health.v1 entry for each model service
("mic2e.v1.SegmentationService", ...) saying whether its server(s) answer SERVING, asked
over the very channels the calls use: SERVING there means a call made now finds a
connected channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mic2e.channel import MAX_MESSAGE_MB, aio_channel
from mic2e.image_refs import ImageReferences
from mic2e.v1 import common_pb2

from mic2e_services.errors import DownstreamError

T = TypeVar("T")
log = logging.getLogger(__name__)

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def rename_fields(status_details: bytes, rename: Callable[[str], str]) -> bytes:
    """Rewrite BadRequest field paths in a serialized google.rpc.Status.

    A model server names fields of ITS request ("options.steps"); the orchestrator's caller
    must see fields of the request THEY sent ("clear_options.steps").
    """
    status = status_pb2.Status.FromString(status_details)
    for packed in status.details:
        bad = error_details_pb2.BadRequest()
        if packed.Unpack(bad):
            for violation in bad.field_violations:
                violation.field = rename(violation.field)
            packed.Pack(bad)
    return status.SerializeToString()


def downstream_error(exc: grpc.aio.AioRpcError, stage: str, address: str,
                     rename: Callable[[str], str] | None = None) -> DownstreamError:
    details = None
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = value
    if details is not None and rename is not None:
        details = rename_fields(details, rename)
    code = exc.code().name
    if code == "CANCELLED":
        # Our own caller's cancellation never gets here (this handler is cancelled with it),
        # so a cancelled downstream call means that server went away mid-call.
        code = "UNAVAILABLE"
    return DownstreamError(stage, code, exc.details() or "", {"server": address},
                           status_details=details)


class Downstream:
    """One model server (or a DNS name with several replicas behind it)."""

    def __init__(self, address: str, *, max_message_mb: int = MAX_MESSAGE_MB,
                 known_images: int = 256,
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        self.address = address
        self.channel = aio_channel(
            address, credentials=credentials, max_message_mb=max_message_mb,
            interceptors=[_UntracedHealth(i) if isinstance(
                i, grpc.aio.UnaryUnaryClientInterceptor) else i for i in interceptors])
        self._health = health_pb2_grpc.HealthStub(self.channel)
        #: Call metadata for every downstream call (the bearer token, if any).
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        #: Which images this server holds: the clients' policy (`mic2e.image_refs`).
        self.images = ImageReferences(known_images)

    async def close(self) -> None:
        await self.channel.close()

    async def check(self, service: str, timeout_s: float) -> tuple[bool, str]:
        """(SERVING?, what it said) for `service` on this server (one replica of it)."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                             timeout=timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
        return (reply.status == SERVING,
                health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def unary(self, stage: str, data: bytes,
                    call: Callable[[common_pb2.Image], Awaitable[T]],
                    rename: Callable[[str], str] | None = None, *, sha: str | None = None
                    ) -> T:
        """Run a unary call with the image by reference, under the call policy above.

        `rename` maps the model server's field paths to the caller's, in errors; `sha`:
        the image's SHA-256, already computed for this call (the bytes are hashed once).
        """
        try:
            return await self.images.unary(data, call, digest=sha)
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, stage, self.address, rename) from None

    async def stream(self, stage: str, data: bytes | None,
                     call: Callable[[common_pb2.Image | None], Any],
                     rename: Callable[[str], str] | None = None, *, sha: str | None = None
                     ) -> AsyncIterator[Any]:
        """Run a streaming call likewise (`data` None: a call without an image); the call
        is cancelled if the caller leaves."""
        try:
            async for message in self.images.stream(data, call, digest=sha):
                yield message
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, stage, self.address, rename) from None



class _UntracedHealth(grpc.aio.UnaryUnaryClientInterceptor):
    """`inner` (a tracing interceptor) for every unary call but health checks: the
    orchestrator's own polls every few seconds would fill the traces with nothing."""

    def __init__(self, inner: grpc.aio.UnaryUnaryClientInterceptor) -> None:
        self.inner = inner

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any
                                    ) -> Any:
        method = details.method
        if (method.decode() if isinstance(method, bytes) else method) == _HEALTH_CHECK:
            return await continuation(details, request)
        return await self.inner.intercept_unary_unary(continuation, details, request)


class DownstreamHealth:
    """Polls each model service's server(s) every `interval_s` and sets the orchestrator's
    health entry for it: SERVING while all of them (flux and a separate inpaint server)
    answer SERVING for that service, NOT_SERVING otherwise (down, loading, unreachable,
    or an address that points at another kind of server)."""

    def __init__(self, services: Mapping[str, Sequence[Downstream]], *,
                 interval_s: float) -> None:
        self.services = {name: list(servers) for name, servers in services.items()}
        self.interval_s = interval_s
        self.status: dict[str, int] = {}

    async def run(self, set_status: Callable[[str, int], Awaitable[None]]) -> None:
        """Until cancelled: poll, and call `set_status(service, status)` on each change
        (first NOT_SERVING for every service, so none is ever unknown)."""
        for service in self.services:
            self.status[service] = NOT_SERVING
            await set_status(service, NOT_SERVING)
        # A server that hangs must not stall the watch: each check has its own deadline.
        timeout_s = max(self.interval_s, 1.0)
        while True:
            checks = [(service, server, server.check(service, timeout_s))
                      for service, servers in self.services.items() for server in servers]
            answers = await asyncio.gather(*(c for _, _, c in checks))
            failing: dict[str, str] = {}
            for (service, server, _), (ok, said) in zip(checks, answers, strict=True):
                if not ok:
                    failing.setdefault(service, f"{server.address}: {said}")
            for service in self.services:
                status = NOT_SERVING if service in failing else SERVING
                if status != self.status[service]:
                    self.status[service] = status
                    if status == SERVING:
                        log.info("%s reachable: SERVING", service)
                    else:
                        log.warning("%s not SERVING (%s)", service, failing[service])
                    await set_status(service, status)
            await asyncio.sleep(self.interval_s)
