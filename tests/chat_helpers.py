"""Helpers for tests of the Chat stream: one call, read turn by turn."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc import aio

from fenlo.v1 import chat_pb2
from tests.helpers import Api, RichError, rich_error

READ_TIMEOUT = 10.0


@dataclass
class Turn:
    """The events of one turn, from turn_started to turn_completed."""

    events: list[chat_pb2.ChatResponse]
    started: chat_pb2.TurnStarted = field(init=False)
    completed: chat_pb2.TurnCompleted = field(init=False)
    deltas: list[chat_pb2.TextDelta] = field(init=False)
    sentences: list[chat_pb2.Sentence] = field(init=False)

    def __post_init__(self) -> None:
        kinds = [e.WhichOneof("kind") for e in self.events]
        assert kinds[0] == "turn_started", kinds
        assert kinds[-1] == "turn_completed", kinds
        assert "turn_started" not in kinds[1:] and "turn_completed" not in kinds[:-1], kinds
        assert "error" not in kinds, kinds
        self.started = self.events[0].turn_started
        self.completed = self.events[-1].turn_completed
        self.deltas = [e.delta for e in self.events if e.WhichOneof("kind") == "delta"]
        self.sentences = [e.sentence for e in self.events if e.WhichOneof("kind") == "sentence"]
        turn_id = self.started.turn_id
        assert turn_id
        assert self.completed.turn_id == turn_id
        assert self.completed.user_message == self.started.user_message
        assert self.completed.replayed == self.started.replayed
        for event in self.events[1:-1]:
            inner = getattr(event, event.WhichOneof("kind"))
            if hasattr(inner, "turn_id"):
                assert inner.turn_id == turn_id, event
        assert [d.index for d in self.deltas] == list(range(len(self.deltas)))
        assert [s.index for s in self.sentences] == list(range(len(self.sentences)))

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)


class ChatStream:
    """One Chat call with helpers to send requests and read turns."""

    def __init__(self, api: Api, token: str) -> None:
        self.call: Any = api.chat.Chat(metadata=api.md(token), timeout=60)

    async def send(self, **kind: Any) -> None:
        await self.call.write(chat_pb2.ChatRequest(**kind))

    async def say(self, text: str, client_message_id: str = "") -> None:
        await self.send(
            user_message=chat_pb2.UserMessage(text=text, client_message_id=client_message_id)
        )

    async def read(self) -> chat_pb2.ChatResponse:
        response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert response is not aio.EOF, "the stream ended"
        return response

    async def start(self, **start: Any) -> chat_pb2.SessionStarted:
        await self.send(start=chat_pb2.StartChat(**start))
        response = await self.read()
        assert response.WhichOneof("kind") == "session_started", response
        return response.session_started

    async def turn(self) -> Turn:
        events = [await self.read()]
        while events[-1].WhichOneof("kind") != "turn_completed":
            assert events[-1].WhichOneof("kind") != "error", events[-1]
            events.append(await self.read())
        return Turn(events)

    async def turn_error(self) -> chat_pb2.TurnError:
        """The next `error`, after any annotations (a turn's guard verdict comes first)."""
        response = await self.read()
        while response.WhichOneof("kind") == "annotations":
            response = await self.read()
        assert response.WhichOneof("kind") == "error", response
        return response.error

    async def read_until(self, kind: str) -> chat_pb2.ChatResponse:
        """Read past other responses to the next one of ``kind``."""
        while (response := await self.read()).WhichOneof("kind") != kind:
            assert response.WhichOneof("kind") not in ("error", "turn_completed"), response
        return response

    async def rest(self) -> list[chat_pb2.ChatResponse]:
        """Every remaining response; the stream must end with OK."""
        responses = []
        while True:
            response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
            if response is aio.EOF:
                break
            responses.append(response)
        assert await self.call.code() == grpc.StatusCode.OK
        return responses

    async def failure(self, code: grpc.StatusCode, reason: str) -> RichError:
        """Read until the stream fails; it must fail with ``code`` and ``reason``."""
        with pytest.raises(aio.AioRpcError) as info:
            while True:
                response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
                assert response is not aio.EOF, "the stream ended without an error"
        error = rich_error(info.value)
        assert (error.code, error.reason, error.domain) == (code, reason, "fenlo.ai"), error
        return error
