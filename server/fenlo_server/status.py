"""Builds the ``google.rpc.Status`` for a domain error: one ``ErrorInfo`` (domain
``fenlo.ai``) plus ``BadRequest``, ``RetryInfo`` or ``QuotaFailure`` where they apply.
"""

from __future__ import annotations

import math

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from fenlo_server.errors import FenloError

ERROR_DOMAIN = "fenlo.ai"


def to_status(error: FenloError) -> status_pb2.Status:
    status = status_pb2.Status(code=error.code, message=error.message)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason_name, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    status.details.add().Pack(info)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
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
