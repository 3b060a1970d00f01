"""One structured log line and metrics per RPC (method, workspace, code, duration)."""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Any, cast

import grpc
from grpc import aio

from fenlo_server import metrics
from fenlo_server.interceptors.base import Around, CallState, WrappingInterceptor, current_call

log = logging.getLogger("fenlo.rpc")
DEADLINE_SLACK_SECONDS = 0.1


class _Observe:
    __slots__ = ("_context", "_state")

    def __init__(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self._state = CallState(method)

    async def __aenter__(self) -> None:
        # Each RPC runs in its own task, so the value needs no reset.
        current_call.set(self._state)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        code = state.code
        if code is None:
            remaining = self._context.time_remaining()
            ended = exc is None or isinstance(exc, GeneratorExit)
            if isinstance(exc, asyncio.CancelledError) or (
                ended
                and (
                    self._context.cancelled()
                    or (remaining is not None and remaining <= DEADLINE_SLACK_SECONDS)
                )
            ):
                # A client whose deadline passes cancels the call itself, a little before
                # the server's copy of the deadline (sent as a relative grpc-timeout)
                # passes: count a cancellation that close to the deadline as expiry. A
                # streaming handler may end by itself first (its request stream simply
                # ends when the client cancels): ending that close to the deadline, the
                # caller saw DEADLINE_EXCEEDED too.
                expired = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            elif exc is None or isinstance(exc, GeneratorExit):
                code = _code_of(self._context)
            elif isinstance(exc, aio.AbortError):
                # The handler called context.abort() itself (health's NOT_FOUND, ...).
                code = _code_of(self._context, default=grpc.StatusCode.UNKNOWN)
            else:
                code = grpc.StatusCode.UNKNOWN
        duration = time.perf_counter() - state.started
        if code == grpc.StatusCode.OK and not self._context.done():
            # A streaming handler whose caller cancelled may return before the
            # cancellation reaches it (its request stream just ends): the outcome is
            # known once the call is done.
            remaining = self._context.time_remaining()

            def finished(ctx: aio.ServicerContext[Any, Any]) -> None:
                outcome = grpc.StatusCode.OK
                if ctx.cancelled():
                    expired = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
                    outcome = (
                        grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                    )
                self._record(outcome, duration)

            # (The stubs declare the callback type as a class, not a protocol.)
            self._context.add_done_callback(cast(Any, finished))
            return
        self._record(code, duration)

    def _record(self, code: grpc.StatusCode, duration: float) -> None:
        state = self._state
        metrics.RPC_TOTAL.labels(state.method, code.name).inc()
        metrics.RPC_SECONDS.labels(state.method).observe(duration)
        principal = state.principal
        fields: dict[str, Any] = {
            "method": state.method,
            "code": code.name,
            "duration_ms": round(duration * 1000, 3),
            "workspace": principal.workspace_id if principal else None,
            "subject": principal.subject if principal else None,
        }
        if state.correlation_id:
            fields["correlation_id"] = state.correlation_id
        log.info("rpc", extra=fields)


def _code_of(
    context: aio.ServicerContext[Any, Any], default: grpc.StatusCode = grpc.StatusCode.OK
) -> grpc.StatusCode:
    """The code a handler set on its context (the stubs do not admit it may be None)."""
    value: object = context.code()
    return value if isinstance(value, grpc.StatusCode) else default


class ObservabilityInterceptor(WrappingInterceptor):
    def around(self, method: str, context: aio.ServicerContext[Any, Any]) -> Around:
        return _Observe(method, context)
