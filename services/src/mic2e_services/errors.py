"""Typed domain errors.

Model code, the worker and the servicers raise these; ONE place
(`runtime.status`) turns them into gRPC status codes with google.rpc details.
This module imports neither grpc nor torch, so model code may use it freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Mic2eError(Exception):
    """Base of every error the servers expect and map to a status code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field, named by its path in the API (e.g. ``options.steps``)."""

    field: str
    description: str


class InvalidArgument(Mic2eError):
    """A request field is invalid -> INVALID_ARGUMENT with BadRequest field violations."""

    def __init__(self, field: str, description: str, *more: FieldViolation) -> None:
        self.violations = [FieldViolation(field, description), *more]
        super().__init__(f"{field}: {description}")

    @property
    def field(self) -> str:
        return self.violations[0].field


class NotFound(Mic2eError):
    """A referenced resource (e.g. an image by SHA-256) is not held -> NOT_FOUND."""

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata or {}


class ResourceExhausted(Mic2eError):
    """Overload (queue full, wait beyond the deadline) or out of device memory.

    -> RESOURCE_EXHAUSTED with RetryInfo when ``retry_after_s`` is set.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None, reason: str = ""):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason or "OVERLOADED"


class Unavailable(Mic2eError):
    """Shutting down, not ready, or a dependency is down -> UNAVAILABLE."""

    def __init__(self, message: str, *, reason: str = "UNAVAILABLE",
                 metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata or {}


class FailedPrecondition(Mic2eError):
    """The request is valid but this server cannot serve it as it is configured (e.g.
    Generate on a server holding a FLUX fill checkpoint) -> FAILED_PRECONDITION; asking
    again will not help, another server may."""

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata or {}


class DeviceLost(Mic2eError):
    """The accelerator is unusable (dead CUDA context): the process must restart.

    The caller gets UNAVAILABLE; the server turns NOT_SERVING and exits so its supervisor
    (Kubernetes, compose) starts a fresh one.
    """


class Cancelled(Mic2eError):
    """The caller cancelled; the work was dropped or stopped -> CANCELLED."""


class DeadlineExceeded(Mic2eError):
    """The caller's deadline passed before or during the work -> DEADLINE_EXCEEDED."""


@dataclass
class DownstreamError(Mic2eError):
    """A call to another server failed; carries that server's code name and stage."""

    stage: str
    code: str  # a grpc.StatusCode name such as "UNAVAILABLE"; kept a string: no grpc here
    detail: str
    metadata: dict[str, str] = field(default_factory=dict)
    #: The downstream's serialized google.rpc.Status (its details are passed on), if any.
    status_details: bytes | None = None

    def __post_init__(self) -> None:
        super().__init__(f"{self.stage} failed: {self.code}: {self.detail}")
