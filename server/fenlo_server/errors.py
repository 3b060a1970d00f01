"""Domain errors. Code anywhere in the server raises these; the errors interceptor
(``interceptors/errors.py``) is the one place that turns them into gRPC statuses.

Each error carries a ``google.rpc.Code``, an ``ErrorReason`` from the contract and
the details a caller needs (field violations, retry delay, quota violations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.rpc import code_pb2

from fenlo.v1 import errors_pb2

Reason = errors_pb2.ErrorReason


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its path in the request and why it is invalid."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted quota: whose, and which."""

    subject: str
    description: str


class FenloError(Exception):
    """Base class of every error a caller may see."""

    code: int = code_pb2.UNKNOWN

    def __init__(
        self,
        reason: errors_pb2.ErrorReason.ValueType,
        message: str,
        *,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
        quota_violations: list[QuotaViolation] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.violations = violations or []
        self.retry_after = retry_after
        self.quota_violations = quota_violations or []
        self.metadata = metadata or {}

    @property
    def reason_name(self) -> str:
        """The reason as sent in ``ErrorInfo.reason`` (no ``ERROR_REASON_`` prefix)."""
        return Reason.Name(self.reason).removeprefix("ERROR_REASON_")


class Unauthenticated(FenloError):
    code = code_pb2.UNAUTHENTICATED


class PermissionDenied(FenloError):
    code = code_pb2.PERMISSION_DENIED


class InvalidArgument(FenloError):
    code = code_pb2.INVALID_ARGUMENT


class NotFound(FenloError):
    code = code_pb2.NOT_FOUND


class AlreadyExists(FenloError):
    code = code_pb2.ALREADY_EXISTS


class ResourceExhausted(FenloError):
    code = code_pb2.RESOURCE_EXHAUSTED


class FailedPrecondition(FenloError):
    code = code_pb2.FAILED_PRECONDITION


class Unavailable(FenloError):
    code = code_pb2.UNAVAILABLE


class DeadlineExceeded(FenloError):
    code = code_pb2.DEADLINE_EXCEEDED


class Internal(FenloError):
    code = code_pb2.INTERNAL


@dataclass
class Violations:
    """Collects field violations so one response reports every bad field."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise InvalidArgument(
                Reason.ERROR_REASON_INVALID_ARGUMENT,
                f"invalid {first.field}: {first.description}{more}",
                violations=list(self.items),
            )


def invalid(field_path: str, description: str) -> InvalidArgument:
    """An INVALID_ARGUMENT error for one field."""
    return InvalidArgument(
        Reason.ERROR_REASON_INVALID_ARGUMENT,
        f"invalid {field_path}: {description}",
        violations=[FieldViolation(field_path, description)],
    )


def not_found(kind: str, name: str) -> NotFound:
    return NotFound(
        Reason.ERROR_REASON_RESOURCE_NOT_FOUND,
        f"{kind} {name} does not exist",
        metadata={"resource": name},
    )


def quota_exceeded(
    workspace_id: str, quota: str, what: str, retry_after: float
) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a workspace quota (``quota`` is its field name in
    WorkspaceQuotas, ``what`` says what was used up), with RetryInfo and QuotaFailure."""
    return ResourceExhausted(
        Reason.ERROR_REASON_QUOTA_EXCEEDED,
        f"the workspace used {what}; retry in {retry_after:.1f}s",
        retry_after=retry_after,
        quota_violations=[QuotaViolation(f"workspaces/{workspace_id}", quota)],
    )
