"""The orchestrator's view of one model server: a channel, image references, errors.

Each model server receives an image's bytes once; later calls send its SHA-256. Calls
follow the clients' one policy (`mic2e.image_refs`): made again once with the bytes when
the server lost the image, and once when the call failed UNAVAILABLE before its first
event (a connection closing as it aged). Failures become `DownstreamError`s naming the
stage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from mic2e.channel import aio_channel
from mic2e.image_refs import ImageReferences
from mic2e.v1 import common_pb2

from mic2e_services.errors import DownstreamError

T = TypeVar("T")


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

    def __init__(self, address: str, *, max_message_mb: int = 64, known_images: int = 256,
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        self.address = address
        self.channel = aio_channel(address, max_message_mb=max_message_mb,
                                   credentials=credentials, interceptors=interceptors)
        #: Call metadata for every downstream call (the bearer token, if any).
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        #: Which images this server holds: the clients' policy (`mic2e.image_refs`).
        self.images = ImageReferences(known_images)

    async def close(self) -> None:
        await self.channel.close()

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

