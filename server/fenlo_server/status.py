"""Builds the ``google.rpc.Status`` for a domain error: one ``ErrorInfo`` (domain
``fenlo.ai``) plus ``BadRequest``, ``RetryInfo`` or ``QuotaFailure`` where they apply.

The status travels in the trailers (``grpc-message``, percent-encoded, and
``grpc-status-details-bin``, base64), and gRPC clients refuse trailers of more
than 8 KiB by default: the call then fails with a bare RESOURCE_EXHAUSTED and the
caller never learns what was wrong. So the status is kept well under that: the
message and every description are cut short, and BadRequest lists the first
field violations that fit (the message says how many there were).
"""

from __future__ import annotations

import math

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from fenlo_server.errors import FenloError

ERROR_DOMAIN = "fenlo.ai"
MAX_MESSAGE_BYTES = 512
MAX_TEXT_BYTES = 256  # a description, a metadata value
MAX_BAD_REQUEST_BYTES = 2048


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "\u2026"


def to_status(error: FenloError) -> status_pb2.Status:
    status = status_pb2.Status(code=error.code, message=clip(error.message, MAX_MESSAGE_BYTES))
    info = error_details_pb2.ErrorInfo(
        reason=error.reason_name,
        domain=ERROR_DOMAIN,
        metadata={k: clip(v, MAX_TEXT_BYTES) for k, v in error.metadata.items()},
    )
    status.details.add().Pack(info)
    if error.violations:
        bad = error_details_pb2.BadRequest()
        for v in error.violations:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=v.field, description=clip(v.description, MAX_TEXT_BYTES)
            )
            size = bad.ByteSize() + violation.ByteSize()
            if bad.field_violations and size > MAX_BAD_REQUEST_BYTES:
                break
            bad.field_violations.append(violation)
        status.details.add().Pack(bad)
    if error.retry_after is not None:
        seconds = max(error.retry_after, 0.0)
        whole = math.floor(seconds)
        delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    if error.quota_violations:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=v.subject, description=v.description
                )
                for v in error.quota_violations
            ]
        )
        status.details.add().Pack(quota)
    return status
