"""Requests that cannot be decoded are INVALID_ARGUMENT, like any other bad request.

gRPC decodes each request message before the handler sees it. When that fails
(a message nested deeper than protobuf's limit of 100, a string that is not
UTF-8, truncated or garbage bytes) grpc itself answers UNKNOWN, without a
``google.rpc.Status``, and logs a traceback for every such call. This
interceptor, the innermost, gives every handler a deserializer that does not
raise: a message it cannot decode arrives as :class:`Undecodable`, and the
handler's wrapper raises INVALID_ARGUMENT for it, after authentication and the
rate limits have run. For streamed requests the error comes when the handler
reads the message.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from fenlo_server.errors import InvalidArgument, Reason
from fenlo_server.interceptors.base import Around, wrap_handler


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message protobuf could not decode, and why."""

    problem: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return deserialize


def _checked(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise InvalidArgument(
            Reason.ERROR_REASON_INVALID_ARGUMENT,
            f"the request is not a valid message: {request.problem}",
        )
    return request


async def _checked_stream(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


def _no_layer(method: str, context: aio.ServicerContext[Any, Any]) -> Around:
    return contextlib.nullcontext()


def checked_handler(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a deserializer that never raises and a check of what it made."""
    if handler.request_deserializer is None:
        return handler
    return wrap_handler(
        handler,
        "",
        _no_layer,
        deserializer=_tolerant,
        request=_checked,
        requests=_checked_stream,
    )


class DecodingInterceptor(aio.ServerInterceptor):
    """Put last in the server's interceptors, so it wraps the servicer directly."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else checked_handler(handler)
