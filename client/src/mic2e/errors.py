"""Typed exceptions of the mic2e client, one per gRPC status code, with the details.

Every exception carries the status `code` (a `grpc.StatusCode`), the server's `message`
and the decoded google.rpc details: `field_violations` (INVALID_ARGUMENT),
`retry_after_s` (RESOURCE_EXHAUSTED), `reason` / `metadata` (ErrorInfo, e.g. the stage
that failed in an orchestrated call).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


class Mic2eError(Exception):
    """A call failed; see the module docstring for the fields."""

    def __init__(self, code: grpc.StatusCode, message: str, *,
                 field_violations: list[tuple[str, str]] | None = None,
                 retry_after_s: float | None = None, reason: str = "",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations or []
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.metadata = metadata or {}

    @property
    def field(self) -> str | None:
        """The first bad field's path, for INVALID_ARGUMENT."""
        return self.field_violations[0][0] if self.field_violations else None


class InvalidArgumentError(Mic2eError):
    """A request field is invalid; `field_violations` names it."""


class NotFoundError(Mic2eError):
    """A referenced image is not held by the server (the client re-sends it itself)."""


class ResourceExhaustedError(Mic2eError):
    """The server is overloaded; retry after `retry_after_s`."""


class UnavailableError(Mic2eError):
    """The server (or a model server behind the orchestrator) is down or stopping."""


class DeadlineExceededError(Mic2eError):
    """The call's deadline passed."""


class CancelledError(Mic2eError):
    """The call was cancelled."""


class UnauthenticatedError(Mic2eError):
    """Missing or wrong credentials."""


class FailedPreconditionError(Mic2eError):
    """FAILED_PRECONDITION: valid, but this server cannot serve it as it is configured
    (e.g. Generate on a server holding a FLUX fill checkpoint); `reason` says why."""


class InternalError(Mic2eError):
    """A bug on the server side."""


_BY_CODE: dict[grpc.StatusCode, type[Mic2eError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(code: grpc.StatusCode, message: str,
                   trailing_metadata: object) -> Mic2eError:
    """Build the typed exception from a failed call's code, message and trailers."""
    kwargs: dict = {}
    raw = None
    for key, value in trailing_metadata or ():
        if key == "grpc-status-details-bin":
            raw = value
    if raw is not None:
        status = status_pb2.Status.FromString(raw)
        for packed in status.details:
            bad, retry, info = (error_details_pb2.BadRequest(), error_details_pb2.RetryInfo(),
                                error_details_pb2.ErrorInfo())
            if packed.Unpack(bad):
                kwargs["field_violations"] = [(v.field, v.description)
                                              for v in bad.field_violations]
            elif packed.Unpack(retry):
                kwargs["retry_after_s"] = retry.retry_delay.ToNanoseconds() / 1e9
            elif packed.Unpack(info):
                kwargs["reason"] = info.reason
                kwargs["metadata"] = dict(info.metadata)
    cls = _BY_CODE.get(code, Mic2eError)
    return cls(code, message, **kwargs)
