"""Shared machinery of Fenlo's server interceptors.

Each interceptor supplies an async context manager that runs around the
handler of every call. :func:`wrap_handler` applies it to all four RPC
shapes and to both handler styles: handlers that return or yield their
responses, and handlers that ``await context.write(...)``.

Every call also gets one :class:`CallState` (method, principal, final code)
that the layers share through a contextvar: the auth layer fills in the
principal, the error layer the code, and the logging layer reads both.
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import grpc
from grpc import aio

from fenlo_server.auth.principal import Principal


@dataclass(slots=True)
class CallState:
    """What the interceptor layers learn about one call."""

    method: str
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    code: grpc.StatusCode | None = None
    correlation_id: str | None = None


current_call: contextvars.ContextVar[CallState | None] = contextvars.ContextVar(
    "fenlo_call", default=None
)


class Around(Protocol):
    """An async context manager run around one call's handler."""

    async def __aenter__(self) -> None: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


AroundFactory = Callable[[str, aio.ServicerContext[Any, Any]], Around]


def _same(request: Any) -> Any:
    return request


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    around: AroundFactory,
    *,
    deserializer: Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]] | None = None,
    request: Callable[[Any], Any] = _same,
    requests: Callable[[Any], Any] = _same,
) -> grpc.RpcMethodHandler[Any, Any]:
    """Return ``handler`` with ``around(method, context)`` entered around every call.

    ``deserializer`` wraps the handler's request deserializer; ``request`` is applied
    to a single request message and ``requests`` to a stream of them before the
    handler sees them (the decoding layer checks what its deserializer made)."""
    decode = handler.request_deserializer
    kwargs = {
        "request_deserializer": deserializer(decode) if deserializer and decode else decode,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def unary_unary(message: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with around(method, context):
                return await inner_uu(request(message), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)

    if handler.stream_unary is not None:
        inner_su: Callable[..., Awaitable[Any]] = handler.stream_unary

        async def stream_unary(messages: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with around(method, context):
                return await inner_su(requests(messages), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)

    streaming = handler.unary_stream if handler.unary_stream is not None else handler.stream_stream
    assert streaming is not None
    inner_stream: Callable[..., Any] = streaming
    many = handler.stream_stream is not None

    async def stream(message: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with around(method, context):
            result = inner_stream(requests(message) if many else request(message), context)
            if inspect.isasyncgen(result):
                try:
                    async for response in result:
                        yield response
                finally:
                    await result.aclose()
            else:
                await result

    if many:
        return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
    return grpc.unary_stream_rpc_method_handler(stream, **kwargs)


class WrappingInterceptor(aio.ServerInterceptor):
    """An interceptor that wraps every handler with ``self.around``."""

    def around(self, method: str, context: aio.ServicerContext[Any, Any]) -> Around:
        raise NotImplementedError

    def applies_to(self, method: str) -> bool:
        return True

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        return wrap_handler(handler, method, self.around)
