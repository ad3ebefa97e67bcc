"""The ONE mapping from domain errors to gRPC status codes with google.rpc details.

Servicer methods are wrapped with `@rpc` (unary) or `@stream_rpc` (server streaming);
whatever `Mic2eError` escapes them becomes the status below, and anything else becomes
INTERNAL (logged with its traceback; the caller sees no internals).

| error                     | code                | details                       |
|---------------------------|---------------------|-------------------------------|
| InvalidArgument           | INVALID_ARGUMENT    | BadRequest field violations   |
| NotFound                  | NOT_FOUND           | ErrorInfo (reason, metadata)  |
| ResourceExhausted         | RESOURCE_EXHAUSTED  | RetryInfo (when known), ErrorInfo |
| Unavailable               | UNAVAILABLE         | ErrorInfo                     |
| FailedPrecondition        | FAILED_PRECONDITION | ErrorInfo (reason, metadata)  |
| DeviceLost                | UNAVAILABLE         | ErrorInfo reason DEVICE_LOST  |
| Cancelled                 | CANCELLED           | -                             |
| DeadlineExceeded          | DEADLINE_EXCEEDED   | -                             |
| DownstreamError           | the downstream code | ErrorInfo reason STAGE_FAILED, metadata stage |
| anything else             | INTERNAL            | ErrorInfo reason INTERNAL     |

Request bytes that do not parse as the method's message never reach a servicer
(`request_bytes.RequestBytes` answers INVALID_ARGUMENT naming "request").
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mic2e_services.errors import (
    Cancelled,
    DeadlineExceeded,
    DeviceLost,
    DownstreamError,
    FailedPrecondition,
    InvalidArgument,
    Mic2eError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)

#: ErrorInfo.domain of every error these servers raise.
ERROR_DOMAIN = "mic2e.v1"

T = TypeVar("T")


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _error_info(reason: str, metadata: dict[str, str] | None = None) -> any_pb2.Any:
    return _pack(error_details_pb2.ErrorInfo(
        reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {}))


def to_status(exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status (code, message, details) for an exception."""
    details: list[any_pb2.Any] = []
    message = exc.message if isinstance(exc, Mic2eError) else "internal error"
    if isinstance(exc, InvalidArgument):
        code = code_pb2.INVALID_ARGUMENT
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ])))
    elif isinstance(exc, NotFound):
        code = code_pb2.NOT_FOUND
        details.append(_error_info(exc.reason, exc.metadata))
    elif isinstance(exc, ResourceExhausted):
        code = code_pb2.RESOURCE_EXHAUSTED
        if exc.retry_after_s is not None and math.isfinite(exc.retry_after_s):
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(max(exc.retry_after_s, 0.0) * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        details.append(_error_info(exc.reason))
    elif isinstance(exc, Unavailable):
        code = code_pb2.UNAVAILABLE
        details.append(_error_info(exc.reason, exc.metadata))
    elif isinstance(exc, FailedPrecondition):
        code = code_pb2.FAILED_PRECONDITION
        details.append(_error_info(exc.reason, exc.metadata))
    elif isinstance(exc, DeviceLost):
        code = code_pb2.UNAVAILABLE
        details.append(_error_info("DEVICE_LOST"))
    elif isinstance(exc, Cancelled):
        code = code_pb2.CANCELLED
    elif isinstance(exc, DeadlineExceeded):
        code = code_pb2.DEADLINE_EXCEEDED
    elif isinstance(exc, DownstreamError):
        code = getattr(code_pb2, exc.code, code_pb2.UNKNOWN)
        if exc.status_details:
            # Keep what the model server said (e.g. BadRequest naming the field).
            details.extend(status_pb2.Status.FromString(exc.status_details).details)
        details.append(_error_info("STAGE_FAILED", {"stage": exc.stage, **exc.metadata}))
    else:
        code = code_pb2.INTERNAL
        details.append(_error_info("INTERNAL"))
    return status_pb2.Status(code=code, message=message, details=details)


def failure(exc: BaseException) -> grpc.Status:
    """The status a call ends with for `exc`; an unexpected error is logged here with its
    traceback (the caller sees no internals)."""
    if not isinstance(exc, Mic2eError):
        log.error("unexpected error in %s", type(exc).__name__, exc_info=exc)
    return rpc_status.to_status(to_status(exc))


def end_with(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
    """Make `status` the call's outcome; the handler then returns (a unary one: None).

    Not `context.abort()`: it raises, and grpc keeps that exception with the call, whose
    traceback holds the handler's frames and through them the request - a reference cycle
    that keeps a 30 MB upload in memory until the next full garbage collection."""
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


def rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | None]]:
    """Wrap a unary servicer method so errors end the call with their status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext
                      ) -> T | None:
        try:
            return await method(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            end_with(context, failure(exc))
            return None

    return wrapper


def stream_rpc(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """Wrap a server-streaming servicer method so errors end the call with their status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[T]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as exc:
            if _is_abort(exc):
                raise
            end_with(context, failure(exc))

    return wrapper


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises this internally to end the RPC; it must pass through untouched.
    return isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError"

