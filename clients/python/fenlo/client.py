"""A small async client over the generated stubs in ``fenlo.v1``.

``Client`` owns one ``grpc.aio`` channel and exposes one typed stub per service. Its
interceptors add the credentials to every call, give unary calls a default deadline,
fill an empty ``request_id`` on Creates (so that retrying them is safe) and turn a
failed unary call's ``grpc.aio.AioRpcError`` into a :class:`fenlo.FenloError`. Retries
of idempotent unary calls on UNAVAILABLE are gRPC's own, set by the channel's service
config (:data:`RETRIED_METHODS`, :func:`service_config`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import message as _message
from grpc import aio

from fenlo.chat import ChatSession
from fenlo.errors import from_rpc_error
from fenlo.v1 import (
    analytics_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    event_pb2_grpc,
    knowledge_pb2_grpc,
    lead_pb2_grpc,
    webhook_pb2_grpc,
    workspace_pb2_grpc,
)

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")

DEFAULT_TIMEOUT = 30.0
"""The default deadline of a unary call, in seconds."""

RETRIED_METHODS: dict[str, tuple[str, ...]] = {
    "fenlo.v1.WorkspaceService": (
        "CreateWorkspace",
        "GetWorkspace",
        "ListWorkspaces",
        "ListApiKeys",
    ),
    "fenlo.v1.ConversationService": (
        "CreateConversation",
        "GetConversation",
        "ListConversations",
        "ListMessages",
    ),
    "fenlo.v1.KnowledgeService": (
        "ImportText",
        "GetDocument",
        "ListDocuments",
        "SearchKnowledge",
        "CreateCuratedAnswer",
        "GetCuratedAnswer",
        "ListCuratedAnswers",
    ),
    "fenlo.v1.LeadService": ("ListLeads", "GetLead"),
    "fenlo.v1.AnalyticsService": ("GetWorkspaceStats",),
    "fenlo.v1.WebhookService": (
        "CreateWebhook",
        "GetWebhook",
        "ListWebhooks",
        "ListDeliveries",
    ),
}
"""The unary methods gRPC retries on UNAVAILABLE: reads, and Creates that carry a
``request_id`` (the client fills an empty one, so a retried Create cannot create twice).
Updates, Deletes, PostAgentMessage, EraseContact and the streams are never retried."""

_CREATES_WITH_REQUEST_ID = frozenset(
    f"/{service}/{method}"
    for service, methods in RETRIED_METHODS.items()
    for method in methods
    if method.startswith(("Create", "Import"))
)


def service_config(
    *,
    max_attempts: int = 4,
    initial_backoff: float = 0.2,
    max_backoff: float = 2.0,
    backoff_multiplier: float = 2.0,
) -> str:
    """The JSON service config that retries :data:`RETRIED_METHODS` on UNAVAILABLE.

    Only UNAVAILABLE is retried (a draining server, an unreachable dependency, a
    dropped connection). RESOURCE_EXHAUSTED (rate limits, quotas) is not: the error's
    ``retry_after`` says when to try again, and the caller decides. gRPC's own
    backoff does not read ``RetryInfo``; it is bounded by the arguments here.
    """
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [
                        {"service": service, "method": method}
                        for service, methods in RETRIED_METHODS.items()
                        for method in methods
                    ],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": f"{initial_backoff}s",
                        "maxBackoff": f"{max_backoff}s",
                        "backoffMultiplier": backoff_multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def _details(
    details: aio.ClientCallDetails, metadata: Sequence[tuple[str, str]], timeout: float | None
) -> aio.ClientCallDetails:
    merged = aio.Metadata(*metadata)
    for key, value in details.metadata or ():
        merged.add(key, value)
    return aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else timeout,
        metadata=merged,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def _method_name(details: aio.ClientCallDetails) -> str:
    method: str | bytes = details.method
    return method.decode() if isinstance(method, bytes) else method


class _UnaryUnary(aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]], timeout: float | None) -> None:
        self._metadata = metadata
        self._timeout = timeout

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _TRequest], Awaitable[aio.UnaryUnaryCall[_TRequest, _TResponse]]
        ],
        client_call_details: aio.ClientCallDetails,
        request: _TRequest,
    ) -> _TResponse | aio.UnaryUnaryCall[_TRequest, _TResponse]:
        if (
            _method_name(client_call_details) in _CREATES_WITH_REQUEST_ID
            and isinstance(request, _message.Message)
            and not getattr(request, "request_id", "x")
        ):
            copy: Any = type(request)()
            copy.CopyFrom(request)
            copy.request_id = str(uuid.uuid4())
            request = copy
        call = await continuation(
            _details(client_call_details, self._metadata, self._timeout), request
        )
        try:
            return await call
        except aio.AioRpcError as error:
            raise from_rpc_error(error) from error


class _UnaryStream(aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = metadata

    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _TRequest],
            Awaitable[aio.UnaryStreamCall[_TRequest, _TResponse]],
        ],
        client_call_details: aio.ClientCallDetails,
        request: _TRequest,
    ) -> AsyncIterator[_TResponse] | aio.UnaryStreamCall[_TRequest, _TResponse]:
        return await continuation(_details(client_call_details, self._metadata, None), request)


class _StreamUnary(aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]], timeout: float | None) -> None:
        self._metadata = metadata
        self._timeout = timeout

    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, AsyncIterable[_TRequest] | Iterable[_TRequest]],
            Awaitable[aio.StreamUnaryCall[_TRequest, _TResponse]],
        ],
        client_call_details: aio.ClientCallDetails,
        request_iterator: AsyncIterable[_TRequest] | Iterable[_TRequest],
    ) -> _TResponse | aio.StreamUnaryCall[_TRequest, _TResponse]:
        return await continuation(
            _details(client_call_details, self._metadata, self._timeout), request_iterator
        )


class _StreamStream(aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = metadata

    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, AsyncIterable[_TRequest] | Iterable[_TRequest]],
            Awaitable[aio.StreamStreamCall[_TRequest, _TResponse]],
        ],
        client_call_details: aio.ClientCallDetails,
        request_iterator: AsyncIterable[_TRequest] | Iterable[_TRequest],
    ) -> AsyncIterator[_TResponse] | aio.StreamStreamCall[_TRequest, _TResponse]:
        return await continuation(
            _details(client_call_details, self._metadata, None), request_iterator
        )


class ChatApi:
    """``client.chat``: the ChatService stub's ``Chat`` method, and, called, the chat helper.

    ``client.chat.Chat(...)`` is the raw bidirectional stream; ``client.chat(workspace)``
    returns a :class:`~fenlo.chat.ChatSession` to use as ``async with``.
    """

    def __init__(self, stub: chat_pb2_grpc.ChatServiceAsyncStub) -> None:
        self.stub = stub
        self.Chat = stub.Chat

    def __call__(
        self,
        workspace: str | None = None,
        conversation: str | None = None,
        *,
        sentence_events: bool = False,
        channel: conversation_pb2.Channel.ValueType = conversation_pb2.CHANNEL_UNSPECIFIED,
        external_contact_id: str = "",
        metadata: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> ChatSession:
        """A chat session on a new conversation in ``workspace`` (``workspaces/{id}`` or
        the bare id) or, with ``conversation``, on that existing conversation.

        ``channel``, ``external_contact_id`` and ``metadata`` (labels) apply to a new
        conversation only. ``timeout`` is a deadline for the whole stream (none by
        default).
        """
        if conversation:
            start = chat_pb2.StartChat(conversation=conversation)
        elif workspace:
            parent = workspace if workspace.startswith("workspaces/") else f"workspaces/{workspace}"
            start = chat_pb2.StartChat(
                parent=parent,
                channel=channel,
                external_contact_id=external_contact_id,
                metadata=metadata or {},
            )
        else:
            raise ValueError("chat() needs a workspace or a conversation")
        start.options.sentence_events = sentence_events
        return ChatSession(self.stub, start, timeout=timeout)


class Client:
    """An async Fenlo client on one channel.

    Args:
        target: ``host:port`` of the server.
        token: a Fenlo JWT, sent as ``authorization: Bearer <token>``.
        api_key: a workspace API key (``fk_...``), sent the same way; give one of the two.
        tls: ``False`` for a plaintext channel, ``True`` for TLS with the system's (or
            ``root_certificates``') roots, or ready ``grpc.ChannelCredentials``.
        root_certificates: PEM roots for ``tls=True``.
        timeout: the default deadline of a unary call, in seconds (``None``: none).
            Streams get no default deadline.
        retries: retry idempotent unary calls on UNAVAILABLE (see :func:`service_config`).
        options: extra channel options.

    Use it as ``async with fenlo.Client(...) as client:``; the channel closes at the end.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if token and api_key:
            raise ValueError("give a token or an API key, not both")
        credential = token or api_key
        metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {credential}"),) if credential else ()
        )
        channel_options: list[tuple[str, Any]] = list(options)
        if retries:
            channel_options.append(("grpc.enable_retries", 1))
            channel_options.append(("grpc.service_config", service_config()))
        interceptors: list[aio.ClientInterceptor] = [
            _UnaryUnary(metadata, timeout),
            _UnaryStream(metadata),
            _StreamUnary(metadata, timeout),
            _StreamStream(metadata),
        ]
        if tls is False:
            self.channel = aio.insecure_channel(
                target, options=channel_options, interceptors=interceptors
            )
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates) if tls is True else tls
            self.channel = aio.secure_channel(
                target, credentials, options=channel_options, interceptors=interceptors
            )
        self.target = target
        self.timeout = timeout
        self.workspaces = workspace_pb2_grpc.WorkspaceServiceStub(self.channel)
        self.conversations = conversation_pb2_grpc.ConversationServiceStub(self.channel)
        self.chat = ChatApi(chat_pb2_grpc.ChatServiceStub(self.channel))
        self.knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(self.channel)
        self.events = event_pb2_grpc.EventServiceStub(self.channel)
        self.leads = lead_pb2_grpc.LeadServiceStub(self.channel)
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(self.channel)
        self.webhooks = webhook_pb2_grpc.WebhookServiceStub(self.channel)

    async def close(self) -> None:
        """Close the channel (running calls are cancelled)."""
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
