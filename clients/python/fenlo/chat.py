"""The chat helper: one ``ChatService.Chat`` stream, read turn by turn.

A background task reads the stream. Each turn's events (``turn_started``,
``annotations``, ``delta``, ``sentence``, ``citations``, ``handoff``, then
``turn_completed`` or ``error``) go to the ``send()`` that started the turn. Events
that belong to no turn, ``agent_message`` (a human agent posted) and ``draining`` (the
server is going away), are never lost: they are kept, in order, until
:meth:`ChatSession.pending_events` takes them, and :meth:`ChatSession.wait_pending`
waits for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from fenlo.errors import FenloError, from_rpc_error, from_status
from fenlo.v1 import chat_pb2, chat_pb2_grpc

_OUT_OF_TURN = frozenset({"agent_message", "draining"})
_END = object()


class ChatSession:
    """One chat session; create it with ``client.chat(...)`` and use it as ``async with``.

    Attributes (after entering):
        conversation: the conversation's resource name.
        session: the ``SessionStarted`` message (``session.resumed``,
            ``session.conversation``).
        draining: True once the server said it is shutting down; reconnect with
            ``client.chat(conversation=chat.conversation)``.
    """

    def __init__(
        self,
        stub: chat_pb2_grpc.ChatServiceAsyncStub,
        start: chat_pb2.StartChat,
        *,
        timeout: float | None = None,
    ) -> None:
        self._stub = stub
        self._start = start
        self._timeout = timeout
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._turn_events: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: list[chat_pb2.ChatResponse] = []
        self._pending_added = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._failure: FenloError | None = None
        self._unfinished = 0  # turns sent whose last event send() has not consumed
        self._turn_id = ""  # the running turn, as far as send() has seen
        self._delivered = 0  # code points of the running turn's deltas send() yielded
        self.conversation = ""
        self.session = chat_pb2.SessionStarted()
        self.draining = False

    async def __aenter__(self) -> ChatSession:
        self._call = self._stub.Chat(timeout=self._timeout)
        try:
            with contextlib.suppress(asyncio.InvalidStateError):
                # Raised when the server already ended the call (say, bad credentials);
                # the read below then raises the call's error.
                await self._call.write(chat_pb2.ChatRequest(start=self._start))
            first = await self._call.read()
        except aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        if first is aio.EOF or first.WhichOneof("kind") != "session_started":
            code = await self._call.code()
            self._call.cancel()
            raise FenloError(f"the stream ended before session_started ({code.name})", code=code)
        self.session = first.session_started
        self.conversation = self.session.conversation.name
        self._reader = asyncio.create_task(self._read(), name="fenlo-chat-reader")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            # Leaving on an error: do not wait for queued turns, just hang up (the
            # server keeps what it delivered, marked interrupted).
            await self._abort()
            return
        await self.close()

    async def close(self) -> None:
        """Send ``end``, let the server finish the running and queued turns, and wait
        for the stream to close. Raises the stream's error if it did not end with OK."""
        if self._call is None:
            return
        try:
            async with self._write_lock:
                await self._call.write(chat_pb2.ChatRequest(end=chat_pb2.EndChat()))
                await self._call.done_writing()
        except aio.AioRpcError:
            pass  # the stream already failed; the reader has the error
        except asyncio.InvalidStateError:
            pass  # the stream already finished
        if self._reader is not None:
            await self._reader
        if self._failure is not None:
            raise self._failure

    async def _abort(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is aio.EOF:
                    break
                kind = response.WhichOneof("kind")
                if kind in _OUT_OF_TURN:
                    if kind == "draining":
                        self.draining = True
                    self._pending.append(response)
                    self._pending_added.set()
                else:
                    self._turn_events.put_nowait(response)
        except aio.AioRpcError as error:
            self._failure = from_rpc_error(error)
        finally:
            self._turn_events.put_nowait(_END)
            self._pending_added.set()

    def pending_events(self) -> list[chat_pb2.ChatResponse]:
        """The ``agent_message`` and ``draining`` events received so far and not yet
        taken, oldest first; taking them empties the list."""
        events, self._pending = self._pending, []
        self._pending_added.clear()
        return events

    async def wait_pending(self) -> list[chat_pb2.ChatResponse]:
        """Wait until at least one out-of-turn event is pending (or the stream ends),
        then take them as :meth:`pending_events` does. Bound it with
        ``asyncio.timeout``."""
        if not self._pending:
            await self._pending_added.wait()
        return self.pending_events()

    async def _write(self, request: chat_pb2.ChatRequest) -> None:
        try:
            async with self._write_lock:
                await self._call.write(request)
        except aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        except asyncio.InvalidStateError:
            raise self._failure or FenloError(
                "the chat stream is closed", code=grpc.StatusCode.CANCELLED
            ) from None

    async def _next(self) -> chat_pb2.ChatResponse:
        item = await self._turn_events.get()
        if item is _END:
            self._turn_events.put_nowait(_END)  # stay ended for every later reader
            raise self._failure or FenloError(
                "the chat stream ended", code=grpc.StatusCode.CANCELLED
            )
        response: chat_pb2.ChatResponse = item
        return response

    async def send(
        self, text: str, client_message_id: str | None = None
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        """Send a user message and yield its turn's events, ending after
        ``turn_completed``. A failed turn raises its :class:`~fenlo.FenloError`
        (with ``turn_id``); the session stays usable.

        Iterate one turn at a time. If a previous turn was left before its end (a
        ``break``), its remaining events are skipped first.
        """
        if self._call is None:
            raise RuntimeError("use the chat session as `async with client.chat(...)`")
        while self._unfinished:
            await self._consume(await self._next())
        await self._write(
            chat_pb2.ChatRequest(
                user_message=chat_pb2.UserMessage(
                    text=text, client_message_id=client_message_id or ""
                )
            )
        )
        self._unfinished += 1
        while self._unfinished:
            response = await self._next()
            await self._consume(response)
            if response.WhichOneof("kind") == "error":
                error = response.error
                raise from_status(error.status, turn_id=error.turn_id)
            yield response

    async def _consume(self, response: chat_pb2.ChatResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "turn_started":
            self._turn_id = response.turn_started.turn_id
            self._delivered = 0
        elif kind == "delta":
            self._delivered += len(response.delta.text)
        elif kind in ("turn_completed", "error"):
            self._unfinished -= 1
            self._turn_id = ""

    @property
    def turn_id(self) -> str:
        """The running turn's id (empty between turns)."""
        return self._turn_id

    async def interrupt(
        self, turn_id: str | None = None, delivered_code_points: int | None = None
    ) -> None:
        """Stop a turn's answer (barge-in). By default the running turn, cut after the
        deltas ``send()`` has yielded so far. The turn still ends with
        ``turn_completed`` (``interrupted`` set), which ``send()`` yields as usual."""
        target = turn_id or self._turn_id
        if not target:
            raise RuntimeError("no running turn to interrupt; pass turn_id")
        delivered = delivered_code_points
        if delivered is None:
            if target != self._turn_id:
                raise ValueError("interrupting another turn needs delivered_code_points")
            delivered = self._delivered
        await self._write(
            chat_pb2.ChatRequest(
                interrupt=chat_pb2.Interrupt(turn_id=target, delivered_code_points=delivered)
            )
        )
