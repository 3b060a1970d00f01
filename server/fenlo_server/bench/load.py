"""The client load: C concurrent Chat streams of M turns each, in a process of its own.

Reads a JSON spec on stdin, writes one JSON result on stdout. Both Fenlo and
the baseline are driven by this same code. Time to first token is taken at
the client, from writing the user message to reading its first delta; a
turn's latency ends at ``turn_completed``.

Spec: ``{"target": "127.0.0.1:N", "mode": "turns" | "idle", "streams": [S, ...],
"turns": M, "texts": [...]}`` where each S is ``{"token": ..., "parent": ...}``
or ``{"token": ..., "conversation": ...}`` (optionally ``"metadata": {...}``).
With ``"per_stream": true`` in turns mode the result also has ``"conversations"``:
one ``{"conversation": name, "completed": k, "failed": bool}`` per stream (the
conversation from ``session_started``, ``""`` if the stream never started), so a
caller can count what is stored against what each stream saw complete.
In ``idle`` mode every stream does one turn and stays open; the process prints
``{"ready": n}``, waits for a line on stdin, then closes them and reports.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from grpc import aio

from fenlo.v1 import chat_pb2, chat_pb2_grpc
from fenlo_server.loops import run_on

OPENING_AT_ONCE = 50
CHANNEL_OPTIONS = [("grpc.max_concurrent_streams", 0)]


@dataclass
class Tally:
    ttft_ms: list[float] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)
    deltas: int = 0
    turns: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(why)


class Stream:
    def __init__(self, stub: chat_pb2_grpc.ChatServiceStub, spec: dict[str, Any]) -> None:
        self.spec = spec
        chat: Any = stub.Chat
        self.call: Any = chat(metadata=(("authorization", "Bearer " + spec["token"]),))
        self.conversation = ""  # the conversation's name, from session_started

    async def start(self) -> None:
        start = chat_pb2.StartChat(metadata=self.spec.get("metadata", {}))
        if "conversation" in self.spec:
            start.conversation = self.spec["conversation"]
        else:
            start.parent = self.spec["parent"]
        await self.call.write(chat_pb2.ChatRequest(start=start))
        first = await self.call.read()
        if first is aio.EOF or first.WhichOneof("kind") != "session_started":
            raise RuntimeError(f"no session_started: {first}")
        self.conversation = first.session_started.conversation.name

    async def turn(self, text: str, n: int, tally: Tally) -> bool:
        """One turn; True when it completed with text (a failure is tallied)."""
        sent = time.perf_counter()
        await self.call.write(
            chat_pb2.ChatRequest(
                user_message=chat_pb2.UserMessage(text=text, client_message_id=f"m{n}")
            )
        )
        first: float | None = None
        deltas = 0
        while True:
            response = await self.call.read()
            if response is aio.EOF:
                tally.fail("the stream ended mid-turn")
                return False
            kind = response.WhichOneof("kind")
            if kind == "delta":
                deltas += 1
                if first is None:
                    first = time.perf_counter()
            elif kind == "turn_completed":
                done = time.perf_counter()
                break
            elif kind == "error":
                tally.fail(f"turn error: {response.error.status.message}")
                return False
        if first is None:
            tally.fail("a turn without text")
            return False
        tally.ttft_ms.append((first - sent) * 1000)
        tally.turn_ms.append((done - sent) * 1000)
        tally.deltas += deltas
        tally.turns += 1
        return True

    async def end(self) -> None:
        await self.call.write(chat_pb2.ChatRequest(end=chat_pb2.EndChat()))
        await self.call.done_writing()
        while await self.call.read() is not aio.EOF:
            pass


async def _converse(
    stub: chat_pb2_grpc.ChatServiceStub,
    spec: dict[str, Any],
    *,
    turns: int,
    texts: list[str],
    tally: Tally,
    opening: asyncio.Semaphore,
) -> dict[str, Any]:
    """Converse; what this stream saw: its conversation and the turns it saw complete."""
    seen: dict[str, Any] = {"conversation": "", "completed": 0, "failed": False}
    try:
        async with opening:
            stream = Stream(stub, spec)
            await stream.start()
        seen["conversation"] = stream.conversation
        for n in range(turns):
            if await stream.turn(texts[n % len(texts)], n, tally):
                seen["completed"] += 1
            else:
                seen["failed"] = True
        await stream.end()
    except Exception as error:  # a failed stream counts its remaining turns as failed
        tally.fail(repr(error))
        seen["failed"] = True
    return seen


async def run_turns(spec: dict[str, Any]) -> dict[str, Any]:
    tally = Tally()
    async with aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        opening = asyncio.Semaphore(OPENING_AT_ONCE)
        started = time.perf_counter()
        seen = await asyncio.gather(
            *(
                _converse(
                    stub, s, turns=spec["turns"], texts=spec["texts"], tally=tally, opening=opening
                )
                for s in spec["streams"]
            )
        )
        wall = time.perf_counter() - started
    result = {**tally.__dict__, "wall_s": wall}
    if spec.get("per_stream"):
        result["conversations"] = list(seen)
    return result


async def run_idle(spec: dict[str, Any]) -> dict[str, Any]:
    tally = Tally()
    async with aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        opening = asyncio.Semaphore(OPENING_AT_ONCE)
        streams: list[Stream] = []

        async def open_one(s: dict[str, Any]) -> None:
            try:
                async with opening:
                    stream = Stream(stub, s)
                    await stream.start()
                    await stream.turn(spec["texts"][0], 0, tally)
                streams.append(stream)
            except Exception as error:
                tally.fail(repr(error))

        await asyncio.gather(*(open_one(s) for s in spec["streams"]))
        print(json.dumps({"ready": len(streams)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(s.end() for s in streams), return_exceptions=True)
    return {**tally.__dict__, "open": len(streams)}


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["mode"] == "idle":
        return await run_idle(spec)
    return await run_turns(spec)


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    print(json.dumps(run_on(spec.get("loop", "asyncio"), measure(spec))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
