"""The one place that turns exceptions into gRPC statuses.

A :class:`~fenlo_server.errors.FenloError` becomes its status code with a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer. Anything
else becomes INTERNAL with a correlation id: the traceback goes to the log,
never to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import TracebackType
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from fenlo_server.errors import FenloError, Internal, Reason
from fenlo_server.interceptors.base import Around, WrappingInterceptor, current_call
from fenlo_server.status import to_status

log = logging.getLogger("fenlo.errors")
STATUS_DETAILS_KEY = "grpc-status-details-bin"


async def abort_with(context: aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    """Abort the call with a rich status (raises ``grpc.aio.AbortError``)."""
    state = current_call.get()
    code = grpc.StatusCode(_code_tuple(status.code))
    if state is not None:
        state.code = code
    await context.abort(
        code,
        status.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
    )


def _code_tuple(code: int) -> tuple[int, str]:
    for member in grpc.StatusCode:
        if member.value[0] == code:
            return member.value
    return grpc.StatusCode.UNKNOWN.value


def internal_status(correlation_id: str) -> status_pb2.Status:
    error = Internal(
        Reason.ERROR_REASON_INTERNAL,
        f"internal error; quote correlation id {correlation_id} when reporting it",
        metadata={"correlation_id": correlation_id},
    )
    status = to_status(error)
    status.details.add().Pack(error_details_pb2.RequestInfo(request_id=correlation_id))
    return status


class _MapErrors:
    __slots__ = ("_context", "_method")

    def __init__(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc is None or isinstance(exc, asyncio.CancelledError | aio.AbortError):
            return None
        if isinstance(exc, FenloError):
            await abort_with(self._context, to_status(exc))
            return None
        if not isinstance(exc, Exception):
            return None  # GeneratorExit, KeyboardInterrupt: not ours to map
        correlation_id = uuid.uuid4().hex
        state = current_call.get()
        if state is not None:
            state.correlation_id = correlation_id
        log.error(
            "unexpected error",
            exc_info=(exc_type, exc, tb) if exc_type else None,
            extra={"method": self._method, "correlation_id": correlation_id},
        )
        await abort_with(self._context, internal_status(correlation_id))
        return None


class ErrorInterceptor(WrappingInterceptor):
    def around(self, method: str, context: aio.ServicerContext[Any, Any]) -> Around:
        return _MapErrors(method, context)
