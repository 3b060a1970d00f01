"""Fenlo's errors as Python exceptions.

Every error Fenlo returns is a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer, with exactly one ``google.rpc.ErrorInfo`` (domain ``fenlo.ai``, a ``reason``
that names an ``ErrorReason`` without its ``ERROR_REASON_`` prefix), plus
``BadRequest``, ``RetryInfo`` or ``QuotaFailure`` where they apply (see
``protos/fenlo/v1/errors.proto``). :func:`from_rpc_error` turns a
``grpc.aio.AioRpcError`` into the :class:`FenloError` subclass of its status code with
those details decoded; errors that never reached the server (connection refused, a
local deadline) map the same way, with an empty ``reason``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from fenlo.v1 import errors_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "fenlo.ai"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field of a request (from ``google.rpc.BadRequest``)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted quota (from ``google.rpc.QuotaFailure``)."""

    subject: str
    description: str


class FenloError(Exception):
    """Base class of the errors the SDK raises for a failed call.

    Attributes:
        code: the gRPC status code.
        message: the human-readable message (do not branch on it).
        reason: the ``ErrorReason`` name without its prefix, such as
            ``"RESOURCE_NOT_FOUND"``; empty when the error did not come from Fenlo.
        domain: ``"fenlo.ai"`` for Fenlo's errors, else empty.
        metadata: ``ErrorInfo.metadata`` (for example ``correlation_id`` on INTERNAL).
        violations: the ``BadRequest`` field violations.
        retry_after: seconds from ``RetryInfo``, when the server said when to retry.
        quota_violations: the ``QuotaFailure`` violations.
        turn_id: for a failed chat turn, its id.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
        quota_violations: Sequence[QuotaViolation] = (),
        turn_id: str = "",
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.violations = list(violations)
        self.retry_after = retry_after
        self.quota_violations = list(quota_violations)
        self.turn_id = turn_id

    @property
    def reason_value(self) -> errors_pb2.ErrorReason.ValueType:
        """The reason as an ``errors_pb2.ErrorReason`` value (UNSPECIFIED if unknown)."""
        try:
            return errors_pb2.ErrorReason.Value(f"ERROR_REASON_{self.reason}")
        except ValueError:
            return errors_pb2.ERROR_REASON_UNSPECIFIED

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r})"
        )


class Cancelled(FenloError):
    code = grpc.StatusCode.CANCELLED


class Unknown(FenloError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(FenloError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(FenloError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(FenloError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FenloError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(FenloError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(FenloError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(FenloError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(FenloError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(FenloError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(FenloError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(FenloError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(FenloError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(FenloError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(FenloError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[FenloError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def _status_code(number: int) -> grpc.StatusCode:
    for member in grpc.StatusCode:
        if member.value[0] == number:
            return member
    return grpc.StatusCode.UNKNOWN


def from_status(status: status_pb2.Status, *, turn_id: str = "") -> FenloError:
    """The exception for a ``google.rpc.Status`` (also what a chat turn's ``error`` holds)."""
    return _build(_status_code(status.code), status.message, status, turn_id=turn_id)


def from_rpc_error(error: grpc.RpcError) -> FenloError:
    """The exception for a failed call, with the rich status of its trailers decoded."""
    if not isinstance(error, aio.AioRpcError | grpc.Call):
        return Unknown(str(error))
    code = error.code()
    details = error.details() or ""
    status: status_pb2.Status | None = None
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer: fall back to the plain status
                status = None
            break
    exc = _build(code, details, status)
    exc.__cause__ = error
    return exc


def _build(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None, *, turn_id: str = ""
) -> FenloError:
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    quota: list[QuotaViolation] = []
    for detail in status.details if status is not None else ():
        kind = detail.TypeName()
        if kind == "google.rpc.ErrorInfo":
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif kind == "google.rpc.BadRequest":
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif kind == "google.rpc.RetryInfo":
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        elif kind == "google.rpc.QuotaFailure":
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            quota = [QuotaViolation(v.subject, v.description) for v in failure.violations]
    cls = _BY_CODE.get(code, FenloError)
    return cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=violations,
        retry_after=retry_after,
        quota_violations=quota,
        turn_id=turn_id,
    )
