"""The one mapping from domain errors to gRPC status codes and google.rpc details."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2
from mic2e_services import errors
from mic2e_services.runtime.status import ERROR_DOMAIN, to_status

from tests.grpc_helpers import detail


def test_invalid_argument_carries_field_violations():
    exc = errors.InvalidArgument("options.steps", "must be 1..100",
                                 errors.FieldViolation("label", "too long"))
    status = to_status(exc)
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad = detail(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("options.steps", "must be 1..100"), ("label", "too long")]


def test_not_found_carries_error_info():
    status = to_status(errors.NotFound("gone", reason="IMAGE_NOT_FOUND",
                                       metadata={"sha256": "ab"}))
    assert status.code == code_pb2.NOT_FOUND
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "IMAGE_NOT_FOUND", ERROR_DOMAIN, {"sha256": "ab"})


def test_resource_exhausted_carries_retry_info():
    status = to_status(errors.ResourceExhausted("busy", retry_after_s=1.5))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    retry = detail(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000


@pytest.mark.parametrize(("exc", "code"), [
    (errors.Unavailable("down"), code_pb2.UNAVAILABLE),
    (errors.Cancelled("bye"), code_pb2.CANCELLED),
    (errors.DeadlineExceeded("late"), code_pb2.DEADLINE_EXCEEDED),
    (errors.DownstreamError("object_clear", "UNAVAILABLE", "gone"), code_pb2.UNAVAILABLE),
    (errors.DownstreamError("segmentation", "INVALID_ARGUMENT", "bad"),
     code_pb2.INVALID_ARGUMENT),
])
def test_codes(exc, code):
    assert to_status(exc).code == code


def test_downstream_names_the_stage():
    status = to_status(errors.DownstreamError("object_clear", "UNAVAILABLE", "gone"))
    info = detail(status, error_details_pb2.ErrorInfo)
    assert info.reason == "STAGE_FAILED" and info.metadata["stage"] == "object_clear"


def test_unexpected_error_is_internal_without_leaking_its_text():
    status = to_status(KeyError("secret internals"))
    assert status.code == code_pb2.INTERNAL
    assert "secret" not in status.message
