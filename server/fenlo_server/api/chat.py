"""ChatService: the bidirectional chat stream.

The stream protocol (start, turns, replay by ``client_message_id``, end, drain
notices) with each answer streamed from the LLM router: the workspace's system
prompt and the user's message, answered by the workspace's providers (the
offline provider by default). The issue "Chat: the bidirectional streaming
turn pipeline" puts the full pipeline (context, guard, retrieval, analysis)
around the router.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, json_format
from grpc import aio

from fenlo.v1 import chat_pb2, chat_pb2_grpc, conversation_pb2
from fenlo_server import metrics, names
from fenlo_server.api.common import Deps, authorize_workspace, check_text
from fenlo_server.api.conversations import (
    channel_name,
    conversation_to_proto,
    validate_new_conversation,
)
from fenlo_server.errors import (
    FailedPrecondition,
    FenloError,
    InvalidArgument,
    Reason,
    Unavailable,
    Violations,
    invalid,
    not_found,
)
from fenlo_server.ids import new_id
from fenlo_server.knowledge.types import SearchHit
from fenlo_server.llm.errors import AllProvidersFailed, ProviderRequestError
from fenlo_server.llm.prompt import cited_markers, grounded_messages
from fenlo_server.llm.router import ProviderChoice, RouteResult
from fenlo_server.llm.types import LlmRequest, Passage
from fenlo_server.status import to_status
from fenlo_server.storage.models import ConversationRow, MessageRow
from fenlo_server.storage.repositories import ConversationRepository
from fenlo_server.text.sentences import SentenceSplitter

Ctx = aio.ServicerContext[Any, Any]
log = logging.getLogger("fenlo.chat")
RAG_PASSAGES = 4
MAX_CLIENT_MESSAGE_ID = 128
_PROVIDER_NAMES = {
    "LLM_PROVIDER_GROQ": "groq",
    "LLM_PROVIDER_OPENAI": "openai",
    "LLM_PROVIDER_OFFLINE": "offline",
}


def provider_choices(settings: dict[str, Any]) -> list[ProviderChoice]:
    """The workspace's LLM order from its stored settings (empty: the server's)."""
    choices = []
    for entry in settings.get("llm", {}).get("providers", []):
        name = _PROVIDER_NAMES.get(entry.get("provider", ""))
        if name:
            choices.append(ProviderChoice(name, entry.get("model") or None))
    return choices


def llm_error(error: AllProvidersFailed | ProviderRequestError) -> FenloError:
    """The API error for a router failure."""
    if isinstance(error, ProviderRequestError):
        return FailedPrecondition(
            Reason.ERROR_REASON_LLM_REQUEST_REFUSED,
            f"the LLM provider {error.provider} refused the request ({error.kind}): "
            f"{error.detail[:300]}",
            metadata={"provider": error.provider, "kind": error.kind},
        )
    attempts = "; ".join(f"{a.provider}: {a.outcome}" for a in error.attempts)
    return Unavailable(
        Reason.ERROR_REASON_LLM_UNAVAILABLE,
        f"no LLM provider could answer; retry later ({attempts or 'none configured'})",
        metadata={"attempts": attempts},
        retry_after=1.0,
    )


@dataclass(frozen=True, slots=True)
class _Drain:
    grace_seconds: float


_EOF = object()


class ChatHub:
    """The open Chat sessions of this server, so shutdown can tell each to drain."""

    def __init__(self) -> None:
        self._sessions: set[ChatSession] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.draining = False

    def register(self, session: ChatSession) -> None:
        self._sessions.add(session)
        self._empty.clear()
        metrics.OPEN_CHAT_STREAMS.set(len(self._sessions))

    def unregister(self, session: ChatSession) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._empty.set()
        metrics.OPEN_CHAT_STREAMS.set(len(self._sessions))

    async def wait_closed(self) -> None:
        """Wait until no session is open."""
        await self._empty.wait()

    def drain(self, grace_seconds: float) -> int:
        """Send every open session a drain notice; return how many were told."""
        self.draining = True
        for session in list(self._sessions):
            session.notify(_Drain(grace_seconds))
        return len(self._sessions)

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class ChatSession:
    """One Chat stream: reads requests in a task, answers turns in order."""

    def __init__(
        self, deps: Deps, hub: ChatHub, requests: AsyncIterator[chat_pb2.ChatRequest]
    ) -> None:
        self._deps = deps
        self._hub = hub
        self._requests = requests
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._workspace_id = ""
        self._conversation: ConversationRow | None = None
        self._sentences = False
        self._sentence_index = 0

    def notify(self, item: object) -> None:
        self._inbox.put_nowait(item)

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                self._inbox.put_nowait(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # the client went away; treat as the end of its requests
            pass
        finally:
            self._inbox.put_nowait(_EOF)

    async def run(self) -> AsyncIterator[chat_pb2.ChatResponse]:
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            started = False
            while True:
                item = await self._inbox.get()
                if item is _EOF:
                    return
                if isinstance(item, _Drain):
                    yield chat_pb2.ChatResponse(
                        draining=chat_pb2.Draining(grace_period=_duration(item.grace_seconds))
                    )
                    continue
                assert isinstance(item, chat_pb2.ChatRequest)
                kind = item.WhichOneof("kind")
                if not started:
                    if kind != "start":
                        raise FailedPrecondition(
                            Reason.ERROR_REASON_CHAT_NOT_STARTED,
                            "the first message on a Chat stream must be `start`",
                        )
                    yield await self._start(item.start)
                    started = True
                elif kind == "start":
                    raise InvalidArgument(
                        Reason.ERROR_REASON_CHAT_ALREADY_STARTED,
                        "this Chat stream has already started; send `start` only once",
                    )
                elif kind == "end":
                    return
                elif kind == "user_message":
                    async for response in self._turn(item.user_message):
                        yield response
                elif kind == "interrupt":
                    continue  # turns finish at once in this version: nothing to stop
                else:
                    yield _turn_error("", _empty_request())
        finally:
            reader.cancel()

    async def _start(self, start: chat_pb2.StartChat) -> chat_pb2.ChatResponse:
        if self._hub.draining:
            raise Unavailable(
                Reason.ERROR_REASON_SERVER_DRAINING, "the server is shutting down; reconnect"
            )
        target = start.WhichOneof("target")
        self._sentences = start.options.sentence_events
        db = self._deps.db
        if target == "conversation":
            workspace_id, conversation_id = names.parse(
                "conversation", start.conversation, "start.conversation"
            )
            authorize_workspace(workspace_id)
            async with db.workspace(workspace_id) as session:
                row = await ConversationRepository(session).get(conversation_id)
            if row is None:
                raise not_found("conversation", start.conversation)
            if row.state == "CLOSED":
                raise FailedPrecondition(
                    Reason.ERROR_REASON_CONVERSATION_CLOSED,
                    f"{start.conversation} is closed and takes no new turns",
                )
            resumed = True
        elif target == "parent":
            workspace_id = names.workspace_id(start.parent, "start.parent")
            authorize_workspace(workspace_id)
            violations = Violations()
            validate_new_conversation(
                violations,
                "start.",
                start.channel,
                start.external_contact_id,
                dict(start.metadata),
            )
            violations.raise_if_any()
            if await self._deps.directory.get(workspace_id) is None:
                raise not_found("workspace", start.parent)
            async with db.workspace(workspace_id) as session:
                row = await ConversationRepository(session).create(
                    channel=channel_name(start.channel or conversation_pb2.CHANNEL_API),
                    external_contact_id=start.external_contact_id,
                    labels=dict(start.metadata),
                    state="OPEN",
                )
            resumed = False
        else:
            raise invalid(
                "start", "must set `conversation` (to resume) or `parent` (to begin a new one)"
            )
        self._workspace_id = workspace_id
        self._conversation = row
        return chat_pb2.ChatResponse(
            session_started=chat_pb2.SessionStarted(
                conversation=conversation_to_proto(row), resumed=resumed
            )
        )

    async def _turn(self, message: chat_pb2.UserMessage) -> AsyncIterator[chat_pb2.ChatResponse]:
        assert self._conversation is not None
        violations = Violations()
        check_text(
            violations,
            "user_message.text",
            message.text,
            max_chars=self._deps.settings.max_user_text_chars,
            required=True,
        )
        check_text(
            violations,
            "user_message.client_message_id",
            message.client_message_id,
            max_chars=MAX_CLIENT_MESSAGE_ID,
        )
        try:
            violations.raise_if_any()
        except FenloError as error:
            yield _turn_error("", error)
            return
        conversation_id = self._conversation.id
        replay: list[chat_pb2.ChatResponse] = []
        refusal: FenloError | None = None
        async with self._deps.db.workspace(self._workspace_id) as session:
            repo = ConversationRepository(session)
            previous = None
            if message.client_message_id:
                previous = await repo.find_user_message(conversation_id, message.client_message_id)
            if previous is not None:
                stored = await repo.turn_messages(conversation_id, previous.turn_id)
                replay = self._replay(stored, message.client_message_id)
            else:
                # The conversation may have been closed or deleted since the stream started.
                current = await repo.get(conversation_id)
                if current is None:
                    refusal = not_found(
                        "conversation", names.conversation(self._workspace_id, conversation_id)
                    )
                elif current.state == "CLOSED":
                    refusal = FailedPrecondition(
                        Reason.ERROR_REASON_CONVERSATION_CLOSED,
                        f"{names.conversation(self._workspace_id, conversation_id)} is closed "
                        "and takes no new turns",
                    )
                else:
                    turn_id = new_id()
                    user = await repo.append_message(
                        conversation_id,
                        role="USER",
                        text=message.text,
                        turn_id=turn_id,
                        client_message_id=message.client_message_id,
                    )
        # Events are sent once the transaction is over, never while it holds a connection.
        if refusal is not None:
            yield _turn_error("", refusal)
            return
        if replay:
            for response in replay:
                yield response
            return
        yield chat_pb2.ChatResponse(
            turn_started=chat_pb2.TurnStarted(
                turn_id=turn_id,
                user_message=self._name(user),
                client_message_id=message.client_message_id,
            )
        )
        self._sentence_index = 0
        info = await self._deps.directory.get(self._workspace_id)
        settings = info.settings if info is not None else {}
        passages, hits, curated = await self._retrieve(message.text)
        result = RouteResult()
        answer: list[str] = []
        splitter = SentenceSplitter() if self._sentences else None
        failure: FenloError | None = None
        if curated is not None:  # the fast path: the business's own answer, no LLM
            source: AsyncIterator[str] = _words(curated)
            result.providers.append("curated")
        else:
            request = LlmRequest(
                grounded_messages(settings.get("system_prompt", ""), passages, (), message.text),
                passages=tuple(passages),
            )
            source = self._deps.llm.stream(request, provider_choices(settings), result)
        try:
            async for text in source:
                yield chat_pb2.ChatResponse(
                    delta=chat_pb2.TextDelta(turn_id=turn_id, text=text, index=len(answer))
                )
                answer.append(text)
                for sentence in splitter.feed(text) if splitter else ():
                    yield self._sentence(turn_id, sentence)
        except (AllProvidersFailed, ProviderRequestError) as error:
            failure = llm_error(error)
        for sentence in splitter.flush() if splitter else ():
            yield self._sentence(turn_id, sentence)
        text = "".join(answer)
        cited = result.cited or cited_markers(text, passages)
        citations = [_citation(self._workspace_id, hits[m - 1], m) for m in cited if m <= len(hits)]
        if citations:
            yield chat_pb2.ChatResponse(
                citations=chat_pb2.Citations(turn_id=turn_id, citations=citations)
            )
        assistant = None
        if answer:
            async with self._deps.db.workspace(self._workspace_id) as session:
                assistant = await ConversationRepository(session).append_message(
                    conversation_id,
                    role="ASSISTANT",
                    text=text,
                    turn_id=turn_id,
                    interrupted=failure is not None,
                    citations=[
                        json_format.MessageToDict(c, preserving_proto_field_name=True)
                        for c in citations
                    ],
                )
        if failure is not None:
            yield _turn_error(turn_id, failure)
            return
        yield chat_pb2.ChatResponse(
            turn_completed=chat_pb2.TurnCompleted(
                turn_id=turn_id,
                user_message=self._name(user),
                assistant_message=self._name(assistant) if assistant else "",
                usage=chat_pb2.Usage(
                    prompt_tokens=result.usage.prompt_tokens,
                    completion_tokens=result.usage.completion_tokens,
                ),
                providers=result.providers,
            )
        )

    async def _retrieve(self, question: str) -> tuple[list[Passage], list[SearchHit], str | None]:
        """The knowledge base's passages for the question, or a curated answer.

        Retrieval failing must not fail the turn: the answer is then ungrounded.
        """
        try:
            results = await self._deps.knowledge.search(self._workspace_id, question, RAG_PASSAGES)
        except Exception:
            log.warning("knowledge search failed; answering without it", exc_info=True)
            return [], [], None
        if results.curated is not None:
            return [], [], results.curated.entry.answer
        passages = [
            Passage(
                marker=i + 1,
                text=hit.context,
                title=" > ".join([hit.chunk.title, *hit.chunk.heading_path]),
                source=hit.chunk.source_uri,
                score=hit.similarity,
            )
            for i, hit in enumerate(results.hits)
        ]
        return passages, results.hits, None

    def _sentence(self, turn_id: str, text: str) -> chat_pb2.ChatResponse:
        self._sentence_index += 1
        return chat_pb2.ChatResponse(
            sentence=chat_pb2.Sentence(turn_id=turn_id, text=text, index=self._sentence_index - 1)
        )

    def _answer_events(self, turn_id: str, text: str) -> list[chat_pb2.ChatResponse]:
        """A stored answer as the events a live turn sends (for replays)."""
        pieces = re.findall(r"\S+\s*", text)
        events = [
            chat_pb2.ChatResponse(delta=chat_pb2.TextDelta(turn_id=turn_id, text=p, index=i))
            for i, p in enumerate(pieces)
        ]
        if self._sentences:
            splitter = SentenceSplitter()
            self._sentence_index = 0
            events += [
                self._sentence(turn_id, s) for s in [*splitter.feed(text), *splitter.flush()]
            ]
        return events

    def _replay(
        self, stored: list[MessageRow], client_message_id: str
    ) -> list[chat_pb2.ChatResponse]:
        user = next(m for m in stored if m.role == "USER")
        answer = next((m for m in stored if m.role == "ASSISTANT"), None)
        events = [
            chat_pb2.ChatResponse(
                turn_started=chat_pb2.TurnStarted(
                    turn_id=user.turn_id,
                    user_message=self._name(user),
                    client_message_id=client_message_id,
                    replayed=True,
                )
            )
        ]
        if answer is not None:
            events += self._answer_events(user.turn_id, answer.text)
        events.append(
            chat_pb2.ChatResponse(
                turn_completed=chat_pb2.TurnCompleted(
                    turn_id=user.turn_id,
                    user_message=self._name(user),
                    assistant_message=self._name(answer) if answer else "",
                    interrupted=bool(answer and answer.interrupted),
                    replayed=True,
                )
            )
        )
        return events

    def _name(self, row: MessageRow) -> str:
        return names.message(row.workspace_id, row.conversation_id, row.id)


async def _words(text: str) -> AsyncIterator[str]:
    for piece in re.findall(r"\s*\S+\s*", text):
        yield piece


def _citation(workspace_id: str, hit: SearchHit, marker: int) -> conversation_pb2.Citation:
    return conversation_pb2.Citation(
        index=marker,
        document=f"workspaces/{workspace_id}/documents/{hit.chunk.document_id}",
        title=hit.chunk.title,
        source_uri=hit.chunk.source_uri,
        heading_path=list(hit.chunk.heading_path),
        passage=hit.chunk.text,
        score=round(hit.score, 6),
    )


def _empty_request() -> InvalidArgument:
    return InvalidArgument(
        Reason.ERROR_REASON_INVALID_ARGUMENT, "a ChatRequest must set one of its fields"
    )


def _turn_error(turn_id: str, error: FenloError) -> chat_pb2.ChatResponse:
    return chat_pb2.ChatResponse(error=chat_pb2.TurnError(turn_id=turn_id, status=to_status(error)))


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, deps: Deps, hub: ChatHub) -> None:
        self._deps = deps
        self._hub = hub

    async def Chat(
        self, request_iterator: AsyncIterator[chat_pb2.ChatRequest], context: Ctx
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        session = ChatSession(self._deps, self._hub, request_iterator)
        self._hub.register(session)
        try:
            async for response in session.run():
                yield response
        finally:
            self._hub.unregister(session)
