"""ChatService: the bidirectional chat stream.

One stream carries one conversation. A reader task takes the caller's
requests, at most INPUT_BUFFER ahead of the controller, so HTTP/2 flow control
pushes back on a caller that floods; a controller handles them (start, user
messages into a bounded turn queue, interrupts, end); a worker runs the queued
turns one at a time through the workspace's pipeline; everything the caller
gets goes through one bounded queue, so a caller that stops reading slows its
own generation instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, json_format
from grpc import aio

from fenlo.v1 import analysis_pb2, chat_pb2, chat_pb2_grpc, conversation_pb2
from fenlo_server import metrics, names
from fenlo_server.api.common import Deps, authorize_workspace, check_text
from fenlo_server.api.conversations import (
    channel_name,
    conversation_to_proto,
    message_to_proto,
    validate_new_conversation,
)
from fenlo_server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FenloError,
    Internal,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    Unavailable,
    Violations,
    invalid,
    not_found,
    quota_exceeded,
)
from fenlo_server.events import types as events
from fenlo_server.events.bus import PublishedEvent
from fenlo_server.ids import new_id
from fenlo_server.llm.errors import AllProvidersFailed, ProviderRequestError
from fenlo_server.pipeline import annotate
from fenlo_server.pipeline.context import ConversationMemory, MessageContext
from fenlo_server.pipeline.engine import (
    Acknowledged,
    Analysed,
    Cited,
    Guarded,
    Text,
    TurnControl,
    TurnFailed,
)
from fenlo_server.pipeline.registry import StepRegistry
from fenlo_server.pipeline.services import TurnServices
from fenlo_server.status import to_status
from fenlo_server.storage.db import Database
from fenlo_server.storage.models import MessageRow
from fenlo_server.storage.outbox import append_events
from fenlo_server.storage.repositories import ConversationRepository, conversation_gone
from fenlo_server.storage.turns import trim_answer
from fenlo_server.text.sentences import SentenceSplitter

log = logging.getLogger("fenlo.chat")
Ctx = aio.ServicerContext[Any, Any]
MAX_CLIENT_MESSAGE_ID = 128
_WORDS = re.compile(r"\s*\S+\s*")
OUTPUT_BUFFER = 256  # responses waiting for a slow reader before generation pauses
INPUT_BUFFER = 16  # requests read from the caller, not yet handled, before reading pauses
_HANDOFF = {
    "user_request": chat_pb2.HANDOFF_REASON_USER_REQUEST,
    "escalation": chat_pb2.HANDOFF_REASON_ESCALATION,
    "negative_sentiment": chat_pb2.HANDOFF_REASON_NEGATIVE_SENTIMENT,
    "low_quality": chat_pb2.HANDOFF_REASON_LOW_QUALITY,
    "guard_block": chat_pb2.HANDOFF_REASON_GUARD_BLOCK,
}


@dataclass(frozen=True, slots=True)
class _Drain:
    grace_seconds: float


@dataclass(frozen=True, slots=True)
class _Push:
    """A response for the stream from outside it (an agent's message)."""

    response: chat_pb2.ChatResponse


@dataclass(frozen=True, slots=True)
class _State:
    state: str


@dataclass(frozen=True, slots=True)
class _Gone:
    """The stream's conversation was deleted or erased: end the stream."""


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A request that could not be decoded: the stream ends with its error."""

    error: FenloError


_EOF = object()
_TURN_DONE = object()  # the worker finished a turn: the idle clock starts again
_CLOSE = object()


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class ChatHub:
    """The open Chat sessions of this server: for drain notices, agent messages
    and conversation state changes, and for shutdown to wait on.

    Agent messages and state changes arrive as events on the bus
    (:meth:`on_event`), whichever replica committed them: the bus hands each
    event over once, so a stream gets each agent message once. The event carries
    the message's name; the hub loads the message only when one of its streams
    holds that conversation."""

    EVENT_TYPES = (events.AGENT_MESSAGE_POSTED, events.CONVERSATION_STATE_CHANGED)

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sessions: set[ChatSession] = set()
        self._by_conversation: dict[str, set[ChatSession]] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._finishing: set[asyncio.Task[None]] = set()
        self.draining = False

    def register(self, session: ChatSession) -> None:
        self._sessions.add(session)
        self._empty.clear()
        metrics.OPEN_CHAT_STREAMS.set(len(self._sessions))

    def attach(self, session: ChatSession, conversation_id: str) -> None:
        self._by_conversation.setdefault(conversation_id, set()).add(session)

    def unregister(self, session: ChatSession) -> None:
        self._sessions.discard(session)
        for sessions in self._by_conversation.values():
            sessions.discard(session)
        self._by_conversation = {k: v for k, v in self._by_conversation.items() if v}
        if not self._sessions:
            self._empty.set()
        metrics.OPEN_CHAT_STREAMS.set(len(self._sessions))

    async def wait_closed(self) -> None:
        """Wait until no session is open (and every cut-short turn is stored)."""
        await self._empty.wait()
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    def finishing(self, task: asyncio.Task[None]) -> None:
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def drain(self, grace_seconds: float) -> int:
        """Send every open session a drain notice; return how many were told."""
        self.draining = True
        for session in list(self._sessions):
            session.notify(_Drain(grace_seconds))
        return len(self._sessions)

    def push_agent_message(self, conversation_id: str, message: conversation_pb2.Message) -> int:
        """Deliver an agent's message to the conversation's live streams; return how many."""
        sessions = self._by_conversation.get(conversation_id, set())
        for session in sessions:
            session.notify(
                _Push(chat_pb2.ChatResponse(agent_message=chat_pb2.AgentMessage(message=message)))
            )
        return len(sessions)

    def conversation_state(self, conversation_id: str, state: str) -> None:
        for session in self._by_conversation.get(conversation_id, set()):
            session.notify(_State(state))

    async def on_event(self, event: PublishedEvent) -> None:
        """An event from the bus: agent messages and state changes to the live streams."""
        if event.type == events.AGENT_MESSAGE_POSTED:
            try:
                workspace_id, conversation_id, message_id = names.parse(
                    "message", str(event.payload.get("message", "")), "message"
                )
            except FenloError:
                return
            if workspace_id != event.workspace_id or not self._held(workspace_id, conversation_id):
                return
            async with self._db.workspace(workspace_id) as session:
                row = await ConversationRepository(session).get_message(conversation_id, message_id)
            if row is not None:
                self.push_agent_message(conversation_id, message_to_proto(row))
        elif event.type == events.CONVERSATION_STATE_CHANGED:
            try:
                workspace_id, conversation_id = names.parse(
                    "conversation", str(event.payload.get("conversation", "")), "conversation"
                )
            except FenloError:
                return
            state = str(event.payload.get("state", ""))
            if (
                workspace_id == event.workspace_id
                and state
                and self._held(workspace_id, conversation_id)
            ):
                self.conversation_state(conversation_id, state)

    def _held(self, workspace_id: str, conversation_id: str) -> bool:
        return any(
            s.workspace_id == workspace_id for s in self._by_conversation.get(conversation_id, ())
        )

    def end_conversations(self, conversation_ids: Iterable[str]) -> int:
        """End the live streams of conversations that were deleted or erased (they
        fail with NOT_FOUND, their running turn stops); return how many."""
        ended = 0
        for conversation_id in conversation_ids:
            for session in self._by_conversation.get(conversation_id, set()):
                session.notify(_Gone())
                ended += 1
        return ended

    def end_workspace(self, workspace_id: str) -> int:
        """End every live stream of a deleted workspace; return how many."""
        ended = 0
        for session in list(self._sessions):
            if session.workspace_id == workspace_id:
                session.notify(_Gone())
                ended += 1
        return ended

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)


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


def turn_error_of(error: BaseException) -> FenloError:
    if isinstance(error, TurnFailed):
        error = error.error
    if isinstance(error, FenloError):
        return error
    if isinstance(error, AllProvidersFailed | ProviderRequestError):
        return llm_error(error)
    correlation = uuid.uuid4().hex
    log.error("chat turn failed", exc_info=error, extra={"correlation_id": correlation})
    return Internal(
        Reason.ERROR_REASON_INTERNAL,
        f"internal error; quote correlation id {correlation} when reporting it",
        metadata={"correlation_id": correlation},
    )


def _turn_error(turn_id: str, error: FenloError) -> chat_pb2.ChatResponse:
    return chat_pb2.ChatResponse(error=chat_pb2.TurnError(turn_id=turn_id, status=to_status(error)))


class ChatSession:
    """One Chat stream."""

    def __init__(
        self,
        deps: Deps,
        hub: ChatHub,
        registry: StepRegistry,
        services: TurnServices,
        requests: AsyncIterator[chat_pb2.ChatRequest],
    ) -> None:
        self._deps = deps
        self._settings = deps.settings
        self._hub = hub
        self._registry = registry
        self._services = services
        self._requests = requests
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        # Room for the caller's requests in the inbox: when INPUT_BUFFER of them wait,
        # the reader stops pulling from gRPC and HTTP/2 flow control pushes back on
        # the caller, so a flood of requests cannot grow the server's memory.
        self._room = asyncio.Semaphore(INPUT_BUFFER)
        self._out: asyncio.Queue[object] = asyncio.Queue(OUTPUT_BUFFER)
        self._turns: asyncio.Queue[chat_pb2.UserMessage | None] = asyncio.Queue()
        self._pending = 0  # queued plus running turns
        self._tasks: list[asyncio.Task[None]] = []
        self._id = uuid.uuid4().hex
        self._workspace_id = ""
        self._conversation_id = ""
        self._memory = ConversationMemory()
        # The client_message_ids stored in the conversation: read once when a stream
        # resumes it, then kept here (a stream holds the conversation's lock, so no
        # other stream adds any), so a new message costs no lookup before its turn.
        self._stored_ids: set[str] = set()
        self._sentences = False
        self._closing = False
        self._current: tuple[str, TurnControl, MessageContext] | None = None
        self._last: tuple[str, str] | None = None  # (turn id, assistant message id)
        self._sent: dict[str, int] = {}  # code points of each turn's answer handed to gRPC
        self._opened = time.monotonic()
        self._lock_key = ""
        self._worker: asyncio.Task[None] | None = None
        self._discard = False

    # -- outside world ----------------------------------------------------------------

    def notify(self, item: object) -> None:
        self._inbox.put_nowait(item)

    @property
    def workspace_id(self) -> str:
        """The workspace of the stream's conversation ("" before it started)."""
        return self._workspace_id

    @property
    def _lock_ttl(self) -> float:
        return self._settings.chat_lock_seconds or 2 * self._settings.chat_turn_deadline_seconds

    # -- the stream ---------------------------------------------------------------------

    async def run(self) -> AsyncIterator[chat_pb2.ChatResponse]:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read()))
        try:
            yield await self._start()
            self._worker = loop.create_task(self._work())
            self._tasks += [
                loop.create_task(self._control()),
                self._worker,
                loop.create_task(self._keep_lock()),
            ]
            while True:
                item = await self._out.get()
                if item is _CLOSE:
                    return
                if isinstance(item, FenloError):
                    raise item
                assert isinstance(item, chat_pb2.ChatResponse)
                if item.WhichOneof("kind") == "delta":
                    turn = item.delta.turn_id
                    self._sent[turn] = self._sent.get(turn, 0) + len(item.delta.text)
                yield item
        finally:
            await self._close()

    async def _close(self) -> None:
        self._discard = True  # nobody reads any more
        # Drop what waits for the caller: a turn blocked on the full queue then goes on
        # (and stores what was delivered) instead of waiting forever.
        while not self._out.empty():
            self._out.get_nowait()
        worker = self._worker
        for task in self._tasks:
            if task is not worker:
                task.cancel()
        current = self._current
        if current is not None:
            # The caller went away mid-turn: stop generating now; the worker stores
            # what was delivered, marked interrupted, then stops.
            turn_id, control, _ = current
            control.interrupt(self._sent.get(turn_id, 0))
        while not self._turns.empty():  # queued turns were never acknowledged: drop them
            self._turns.get_nowait()
            self._turns.task_done()
        if worker is not None:
            self._turns.put_nowait(None)
            self._hub.finishing(worker)
        await asyncio.gather(*(t for t in self._tasks if t is not worker), return_exceptions=True)
        if self._lock_key:
            with contextlib.suppress(Exception):
                await self._deps.locks.release(self._lock_key, self._id)

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                await self._room.acquire()
                self._inbox.put_nowait(request)
        except asyncio.CancelledError:
            raise
        except FenloError as error:  # an undecodable request (interceptors/decoding.py)
            self._inbox.put_nowait(_Unreadable(error))
        except Exception:  # the caller went away: the same as closing its side
            pass
        finally:
            self._inbox.put_nowait(_EOF)

    async def _take(self) -> object:
        """The next request or notice; taking a request makes room for the reader."""
        item = await self._inbox.get()
        if isinstance(item, chat_pb2.ChatRequest):
            self._room.release()
        return item

    async def _next_request(self) -> object:
        try:
            # asyncio.timeout, not wait_for: no task of its own for every request.
            async with asyncio.timeout(self._settings.chat_idle_timeout_seconds):
                return await self._take()
        except TimeoutError:
            return _EOF

    async def _start(self) -> chat_pb2.ChatResponse:
        while True:
            item = await self._next_request()
            if item is _EOF:
                raise _Closed
            if isinstance(item, _Unreadable):
                raise item.error
            if isinstance(item, _Drain | _Push | _State | _Gone):
                continue  # nothing to tell before the session exists
            assert isinstance(item, chat_pb2.ChatRequest)
            if item.WhichOneof("kind") != "start":
                raise FailedPrecondition(
                    Reason.ERROR_REASON_CHAT_NOT_STARTED,
                    "the first message on a Chat stream must be `start`",
                )
            return await self._open(item.start)

    async def _open(self, start: chat_pb2.StartChat) -> chat_pb2.ChatResponse:
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
                repo = ConversationRepository(session)
                row = await repo.get(conversation_id)
                stored_ids = await repo.client_message_ids(conversation_id) if row else set()
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
                await append_events(
                    session,
                    [
                        events.Event(
                            events.CONVERSATION_STARTED,
                            {
                                "conversation": names.conversation(workspace_id, row.id),
                                "channel": row.channel,
                            },
                        )
                    ],
                )
            resumed = False
            stored_ids = set()
        else:
            raise invalid(
                "start", "must set `conversation` (to resume) or `parent` (to begin a new one)"
            )
        self._lock_key = f"{workspace_id}:{row.id}"
        if not await self._deps.locks.acquire(self._lock_key, self._id, self._lock_ttl):
            self._lock_key = ""
            raise FailedPrecondition(
                Reason.ERROR_REASON_CONVERSATION_BUSY,
                f"another Chat stream is open on {names.conversation(workspace_id, row.id)}; "
                "close it first (or wait for its lock to expire)",
            )
        self._workspace_id = workspace_id
        self._conversation_id = row.id
        self._stored_ids = stored_ids
        self._memory.state = row.state
        self._hub.attach(self, row.id)
        return chat_pb2.ChatResponse(
            session_started=chat_pb2.SessionStarted(
                conversation=conversation_to_proto(row), resumed=resumed
            )
        )

    async def _keep_lock(self) -> None:
        while True:
            await asyncio.sleep(self._lock_ttl / 3)
            with contextlib.suppress(Exception):
                await self._deps.locks.renew(self._lock_key, self._id, self._lock_ttl)

    async def _emit(self, response: chat_pb2.ChatResponse | object) -> None:
        if not self._discard:
            await self._out.put(response)

    async def _control(self) -> None:
        """Handle the caller's requests and notices from the server.

        The stream closes after ``chat_idle_timeout_seconds`` without a request
        and without a turn running (counted from the later of the last request and
        the end of the last turn), and gets ``draining`` (then closes once its turns
        are done) when it is ``chat_max_stream_age_seconds`` old.
        """
        settings = self._settings
        last_activity = time.monotonic()  # the last request or the end of the last turn
        try:
            while True:
                now = time.monotonic()
                age_left = settings.chat_max_stream_age_seconds - (now - self._opened)
                if age_left <= 0:
                    await self._emit(
                        chat_pb2.ChatResponse(draining=chat_pb2.Draining(grace_period=_duration(0)))
                    )
                    await self._finish()
                    return
                idle_left = settings.chat_idle_timeout_seconds - (now - last_activity)
                if self._pending == 0 and idle_left <= 0:
                    await self._finish()
                    return
                # While a turn runs the stream is not idle; the worker says when it ends.
                wait = age_left if self._pending else min(age_left, idle_left)
                try:
                    async with asyncio.timeout(max(wait, 0.01)):
                        item = await self._take()
                except TimeoutError:
                    continue
                if item is _TURN_DONE:
                    last_activity = time.monotonic()
                    continue
                if item is _EOF:
                    await self._finish()
                    return
                if isinstance(item, _Unreadable):
                    raise item.error
                if isinstance(item, _Drain):
                    await self._emit(
                        chat_pb2.ChatResponse(
                            draining=chat_pb2.Draining(grace_period=_duration(item.grace_seconds))
                        )
                    )
                elif isinstance(item, _Push):
                    await self._emit(item.response)
                elif isinstance(item, _State):
                    self._memory.state = item.state
                elif isinstance(item, _Gone):
                    # Ending the stream (in run's finally) stops the running turn; its
                    # store then fails, as the conversation no longer exists.
                    raise conversation_gone(self._workspace_id, self._conversation_id)
                else:
                    assert isinstance(item, chat_pb2.ChatRequest)
                    last_activity = time.monotonic()
                    if await self._handle(item):
                        return
        except FenloError as error:
            await self._emit(error)

    async def _handle(self, request: chat_pb2.ChatRequest) -> bool:
        """Handle one request; True when the stream is to close."""
        kind = request.WhichOneof("kind")
        if kind == "start":
            raise InvalidArgument(
                Reason.ERROR_REASON_CHAT_ALREADY_STARTED,
                "this Chat stream has already started; send `start` only once",
            )
        if kind == "end":
            await self._finish()
            return True
        if kind == "interrupt":
            await self._interrupt(request.interrupt)
            return False
        if kind == "user_message":
            if self._closing:
                return False
            if self._pending > self._settings.chat_max_queued_turns:
                await self._emit(
                    _turn_error(
                        "",
                        ResourceExhausted(
                            Reason.ERROR_REASON_TURN_QUEUE_FULL,
                            f"{self._pending - 1} messages already wait behind the running "
                            "turn; wait for its turn_completed",
                            retry_after=1.0,
                        ),
                    )
                )
                return False
            self._pending += 1
            self._turns.put_nowait(request.user_message)
            return False
        await self._emit(
            _turn_error(
                "",
                InvalidArgument(
                    Reason.ERROR_REASON_INVALID_ARGUMENT, "a ChatRequest must set one of its fields"
                ),
            )
        )
        return False

    async def _finish(self) -> None:
        """Let the running and queued turns finish, then close the stream."""
        self._closing = True
        await self._turns.join()
        await self._emit(_CLOSE)

    async def _interrupt(self, interrupt: chat_pb2.Interrupt) -> None:
        delivered = max(0, interrupt.delivered_code_points)
        current = self._current
        if current is not None and current[0] == interrupt.turn_id:
            current[1].interrupt(delivered)
            return
        if self._last is not None and self._last[0] == interrupt.turn_id and self._last[1]:
            # The answer was complete, but the caller stopped playing it: trim it.
            async with self._deps.db.workspace(self._workspace_id) as session:
                text = await trim_answer(session, self._last[1], delivered)
            history = self._memory.history
            if text is not None and history and history[-1].role == "assistant":
                history[-1] = type(history[-1])("assistant", text)

    async def _work(self) -> None:
        """Run the queued turns, one at a time, in order."""
        while True:
            message = await self._turns.get()
            if message is None:  # the stream closed
                self._turns.task_done()
                return
            try:
                await self._turn(message)
            except asyncio.CancelledError:
                raise
            except FenloError as error:
                await self._emit(_turn_error("", error))
            except Exception as error:
                await self._emit(_turn_error("", turn_error_of(error)))
            finally:
                self._pending -= 1
                self._turns.task_done()
                self._inbox.put_nowait(_TURN_DONE)

    # -- one turn ----------------------------------------------------------------------

    async def _turn(self, message: chat_pb2.UserMessage) -> None:
        violations = Violations()
        check_text(
            violations,
            "user_message.text",
            message.text,
            max_chars=self._settings.max_user_text_chars,
            required=True,
        )
        check_text(
            violations,
            "user_message.client_message_id",
            message.client_message_id,
            max_chars=MAX_CLIENT_MESSAGE_ID,
        )
        violations.raise_if_any()
        if message.client_message_id in self._stored_ids and await self._replay(
            message.client_message_id
        ):
            return
        info = await self._deps.directory.get(self._workspace_id)
        if info is None:
            raise not_found("workspace", names.workspace(self._workspace_id))
        decision = await self._services.limiter.take(
            f"turns:{self._workspace_id}", info.quotas.turns_per_minute
        )
        if not decision.allowed:
            raise quota_exceeded(
                self._workspace_id,
                "turns_per_minute",
                f"its {info.quotas.turns_per_minute} turns per minute",
                decision.retry_after,
            )
        ctx = MessageContext(
            workspace_id=self._workspace_id,
            conversation_id=self._conversation_id,
            turn_id=new_id(),
            text=message.text,
            services=self._services,
            memory=self._memory,
            settings=info.settings,
            client_message_id=message.client_message_id,
        )
        pipeline = self._registry.build(info.settings.get("pipeline"))
        control = TurnControl(ctx)
        self._current = (ctx.turn_id, control, ctx)
        if self._discard:  # the caller went away while the turn was being set up
            control.interrupt(0)
        deadline = asyncio.get_running_loop().call_later(
            self._settings.chat_turn_deadline_seconds, control.interrupt, None
        )
        try:
            await self._run_pipeline(pipeline, ctx, control)
        finally:
            deadline.cancel()
            self._current = None
        self._last = (ctx.turn_id, ctx.assistant_message_id)

    async def _acknowledge(self, ctx: MessageContext) -> None:
        async with self._deps.db.workspace(ctx.workspace_id) as session:
            row = await ConversationRepository(session).append_message(
                ctx.conversation_id,
                role="USER",
                text=ctx.stored_text,
                turn_id=ctx.turn_id,
                client_message_id=ctx.client_message_id,
            )
            # Its event in the same commit: a turn cut short (the server killed
            # mid-answer) leaves no stored message without its event.
            await append_events(
                session,
                [
                    events.Event(
                        events.MESSAGE_CREATED,
                        {
                            "message": names.message(ctx.workspace_id, ctx.conversation_id, row.id),
                            "role": "user",
                        },
                    )
                ],
            )
        ctx.user_message_id = row.id
        if ctx.client_message_id:
            self._stored_ids.add(ctx.client_message_id)

    async def _run_pipeline(self, pipeline: Any, ctx: MessageContext, control: TurnControl) -> None:
        turn_id = ctx.turn_id
        splitter = SentenceSplitter() if self._sentences else None
        sentence_index = 0
        delta_index = 0
        message_name = ""

        async def sentences(pieces: list[str]) -> None:
            nonlocal sentence_index
            for text in pieces:
                await self._emit(
                    chat_pb2.ChatResponse(
                        sentence=chat_pb2.Sentence(turn_id=turn_id, text=text, index=sentence_index)
                    )
                )
                sentence_index += 1

        failure: BaseException | None = None
        try:
            async for event in pipeline.run(ctx, self._acknowledge, control):
                if isinstance(event, Acknowledged):
                    message_name = names.message(
                        ctx.workspace_id, ctx.conversation_id, ctx.user_message_id
                    )
                    await self._emit(
                        chat_pb2.ChatResponse(
                            turn_started=chat_pb2.TurnStarted(
                                turn_id=turn_id,
                                user_message=message_name,
                                client_message_id=ctx.client_message_id,
                            )
                        )
                    )
                elif isinstance(event, Guarded):
                    if ctx.guard is not None:
                        await self._emit(
                            chat_pb2.ChatResponse(
                                annotations=chat_pb2.Annotations(
                                    turn_id=turn_id,
                                    phase=chat_pb2.ANNOTATION_PHASE_GUARD,
                                    analysis=annotate.guard_analysis(ctx),
                                )
                            )
                        )
                elif isinstance(event, Text):
                    await self._emit(
                        chat_pb2.ChatResponse(
                            delta=chat_pb2.TextDelta(
                                turn_id=turn_id, text=event.text, index=delta_index
                            )
                        )
                    )
                    delta_index += 1
                    if splitter is not None:
                        await sentences(splitter.feed(event.text))
                elif isinstance(event, Cited):
                    if splitter is not None:
                        await sentences(splitter.flush())
                        splitter = None
                    await self._emit(
                        chat_pb2.ChatResponse(
                            citations=chat_pb2.Citations(
                                turn_id=turn_id, citations=annotate.citations(ctx)
                            )
                        )
                    )
                elif isinstance(event, Analysed):
                    pass
        except TurnFailed as error:
            failure = error
        if splitter is not None:
            await sentences(splitter.flush())
        if ctx.user_message_id and failure is None:
            analysis = annotate.post_analysis(ctx)
            if analysis.ByteSize():
                await self._emit(
                    chat_pb2.ChatResponse(
                        annotations=chat_pb2.Annotations(
                            turn_id=turn_id,
                            phase=chat_pb2.ANNOTATION_PHASE_ANALYSIS,
                            analysis=analysis,
                        )
                    )
                )
            if ctx.handoff is not None:
                self._memory.state = "HANDED_OFF"
                await self._emit(
                    chat_pb2.ChatResponse(
                        handoff=chat_pb2.Handoff(
                            turn_id=turn_id,
                            reason=_HANDOFF[ctx.handoff.reason],
                            summary=ctx.handoff.summary,
                        )
                    )
                )
        deadline_hit = ctx.interrupted and ctx.delivered is None and failure is None
        if failure is not None or deadline_hit:
            problem = (
                turn_error_of(failure)
                if failure is not None
                else DeadlineExceeded(
                    Reason.ERROR_REASON_TURN_DEADLINE_EXCEEDED,
                    f"the turn took longer than {self._settings.chat_turn_deadline_seconds:g}s; "
                    + (
                        "what was generated is stored, marked interrupted"
                        if message_name
                        else "it stopped before the message was stored"
                    ),
                )
            )
            await self._emit(_turn_error(turn_id if message_name else "", problem))
            return
        await self._emit(
            chat_pb2.ChatResponse(
                turn_completed=chat_pb2.TurnCompleted(
                    turn_id=turn_id,
                    user_message=message_name,
                    assistant_message=names.message(
                        ctx.workspace_id, ctx.conversation_id, ctx.assistant_message_id
                    )
                    if ctx.assistant_message_id
                    else "",
                    usage=chat_pb2.Usage(
                        prompt_tokens=ctx.usage.prompt_tokens,
                        completion_tokens=ctx.usage.completion_tokens,
                    ),
                    providers=ctx.providers,
                    step_timings=[
                        chat_pb2.StepTiming(
                            step=t.step,
                            outcome=chat_pb2.StepOutcome.Value(f"STEP_OUTCOME_{t.outcome.upper()}"),
                            duration=_duration(t.seconds),
                            detail=t.detail,
                        )
                        for t in ctx.timings
                    ],
                    interrupted=ctx.interrupted,
                )
            )
        )

    # -- replays -----------------------------------------------------------------------

    async def _replay(self, client_message_id: str) -> bool:
        """Send a stored turn again for a repeated client_message_id; False if new."""
        async with self._deps.db.workspace(self._workspace_id) as session:
            repo = ConversationRepository(session)
            previous = await repo.find_user_message(self._conversation_id, client_message_id)
            if previous is None:
                return False
            stored = await repo.turn_messages(self._conversation_id, previous.turn_id)
        for response in self._replay_events(stored, client_message_id):
            await self._emit(response)
        return True

    def _replay_events(
        self, stored: list[MessageRow], client_message_id: str
    ) -> list[chat_pb2.ChatResponse]:
        user = next(m for m in stored if m.role == "USER")
        answer = next((m for m in stored if m.role == "ASSISTANT"), None)
        turn_id = user.turn_id
        user_name = names.message(user.workspace_id, user.conversation_id, user.id)
        analysis = json_format.ParseDict(
            user.analysis, analysis_pb2.TurnAnalysis(), ignore_unknown_fields=True
        )
        out = [
            chat_pb2.ChatResponse(
                turn_started=chat_pb2.TurnStarted(
                    turn_id=turn_id,
                    user_message=user_name,
                    client_message_id=client_message_id,
                    replayed=True,
                )
            )
        ]
        if analysis.HasField("guard"):
            out.append(
                chat_pb2.ChatResponse(
                    annotations=chat_pb2.Annotations(
                        turn_id=turn_id,
                        phase=chat_pb2.ANNOTATION_PHASE_GUARD,
                        analysis=analysis_pb2.TurnAnalysis(guard=analysis.guard),
                    )
                )
            )
        if answer is not None:
            proto = message_to_proto(answer)
            pieces = _WORDS.findall(answer.text)
            out += [
                chat_pb2.ChatResponse(delta=chat_pb2.TextDelta(turn_id=turn_id, text=p, index=i))
                for i, p in enumerate(pieces)
            ]
            if self._sentences:
                splitter = SentenceSplitter()
                found = [*splitter.feed(answer.text), *splitter.flush()]
                out += [
                    chat_pb2.ChatResponse(
                        sentence=chat_pb2.Sentence(turn_id=turn_id, text=s, index=i)
                    )
                    for i, s in enumerate(found)
                ]
            if proto.citations:
                out.append(
                    chat_pb2.ChatResponse(
                        citations=chat_pb2.Citations(turn_id=turn_id, citations=proto.citations)
                    )
                )
        analysis.ClearField("guard")
        if analysis.ByteSize():
            out.append(
                chat_pb2.ChatResponse(
                    annotations=chat_pb2.Annotations(
                        turn_id=turn_id, phase=chat_pb2.ANNOTATION_PHASE_ANALYSIS, analysis=analysis
                    )
                )
            )
        out.append(
            chat_pb2.ChatResponse(
                turn_completed=chat_pb2.TurnCompleted(
                    turn_id=turn_id,
                    user_message=user_name,
                    assistant_message=names.message(
                        answer.workspace_id, answer.conversation_id, answer.id
                    )
                    if answer
                    else "",
                    interrupted=bool(answer and answer.interrupted),
                    replayed=True,
                )
            )
        )
        return out


class _Closed(Exception):
    """The caller closed the stream before starting a session."""


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(
        self, deps: Deps, hub: ChatHub, registry: StepRegistry, services: TurnServices
    ) -> None:
        self._deps = deps
        self._hub = hub
        self._registry = registry
        self._services = services

    async def Chat(
        self, request_iterator: AsyncIterator[chat_pb2.ChatRequest], context: Ctx
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        session = ChatSession(
            self._deps, self._hub, self._registry, self._services, request_iterator
        )
        self._hub.register(session)
        try:
            async for response in session.run():
                yield response
        except _Closed:
            return
        finally:
            self._hub.unregister(session)
