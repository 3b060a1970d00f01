"""A simulated telephony bridge on Fenlo's Chat stream.

What a voice bridge does, with the telephony and the speech engines replaced by
timers: the caller's utterances (speech-to-text output) go in as user
messages; the assistant's ``sentence`` events feed a text-to-speech queue
that "speaks" at a speaking rate; when the caller talks over the assistant,
the bridge barges in — it stops speaking, tells the server how much of the
answer was heard (``interrupt`` with ``delivered_code_points``), and sends
what the caller said. The server stores the answer cut where the caller
stopped hearing it, so the next turn's context is what was really said.

    export FENLO_TOKEN=...   # printed by `make run`
    .venv/bin/python examples/voice_bridge.py --workspace <id> [--target 127.0.0.1:50051]

It prints the call's transcript; with ``--json`` one JSON object at the end
(the turns, what was spoken of each, and whether it was cut).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from grpc import aio

from fenlo.v1 import chat_pb2, chat_pb2_grpc, conversation_pb2

# The caller: what they say, and how long after the assistant starts speaking
# they say the next thing (None: they wait until it has finished).
SCRIPT: list[tuple[str, float | None]] = [
    ("Hi, when are you open on Saturday and Sunday?", 0.6),  # barges in after 0.6 s
    ("Sorry, can I pay by card?", None),
    ("Great. Is there step-free access?", None),
]


@dataclass
class Turn:
    """One assistant answer as the bridge saw and spoke it."""

    turn_id: str = ""
    text: str = ""  # the deltas, in order: what the server generated so far
    sentences: list[str] = field(default_factory=list)
    spoken: int = 0  # code points of ``text`` the caller has heard
    done: bool = False
    interrupted: bool = False


class Speaker:
    """Text-to-speech stand-in: speaks queued sentences word by word, at
    ``words_per_second``, and keeps count of what the caller has heard."""

    def __init__(self, words_per_second: float, out: Any) -> None:
        self.delay = 1.0 / words_per_second
        self.queue: asyncio.Queue[tuple[Turn, str]] = asyncio.Queue()
        self.speaking = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.out = out
        self._mid_line = False

    def say(self, turn: Turn, sentence: str) -> None:
        self.idle.clear()
        self.queue.put_nowait((turn, sentence))

    def stop(self) -> None:
        """Barge-in: drop what is queued (the sentence being spoken stops at its word)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.speaking.clear()
        self._end_line()

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False

    async def run(self) -> None:
        while True:
            turn, sentence = await self.queue.get()
            # Where the sentence sits in the answer: from what was heard on.
            start = turn.text.find(sentence, turn.spoken)
            start = turn.spoken if start < 0 else start
            self.speaking.set()
            self.out.write("assistant: ")
            self._mid_line = True
            position = start
            for word in sentence.split(" "):
                if not self.speaking.is_set():
                    break
                await asyncio.sleep(self.delay)
                if not self.speaking.is_set():
                    break
                position += len(word) + 1
                turn.spoken = min(position, start + len(sentence), len(turn.text))
                self.out.write(word + " ")
                self.out.flush()
            self._end_line()
            if self.queue.empty():
                self.speaking.clear()
                self.idle.set()


async def call(target: str, token: str, workspace: str, words_per_second: float) -> list[Turn]:
    out = sys.stdout
    speaker = Speaker(words_per_second, out)
    turns: list[Turn] = []
    async with aio.insecure_channel(target) as channel:
        stream: Any = chat_pb2_grpc.ChatServiceStub(channel).Chat(
            metadata=(("authorization", f"Bearer {token}"),)
        )
        start = chat_pb2.StartChat(
            parent=f"workspaces/{workspace}",
            channel=conversation_pb2.CHANNEL_PHONE,
            options=chat_pb2.ChatOptions(sentence_events=True),
        )
        await stream.write(chat_pb2.ChatRequest(start=start))
        started = await stream.read()
        out.write(f"(call connected: {started.session_started.conversation.name})\n")
        current: dict[str, Turn] = {}
        completed = asyncio.Event()

        async def listen() -> None:
            while (response := await stream.read()) is not aio.EOF:
                kind = response.WhichOneof("kind")
                if kind == "turn_started":
                    turn = Turn(turn_id=response.turn_started.turn_id)
                    current[turn.turn_id] = turn
                    turns.append(turn)
                elif kind == "delta":
                    current[response.delta.turn_id].text += response.delta.text
                elif kind == "sentence":
                    turn = current[response.sentence.turn_id]
                    turn.sentences.append(response.sentence.text)
                    if not turn.interrupted:
                        speaker.say(turn, response.sentence.text)
                elif kind == "turn_completed":
                    current[response.turn_completed.turn_id].done = True
                    completed.set()
                elif kind == "error":
                    out.write(f"(turn failed: {response.error.status.message})\n")
                    completed.set()

        speaking = asyncio.create_task(speaker.run())
        listening = asyncio.create_task(listen())
        try:
            for utterance, barge_in_after in SCRIPT:
                out.write(f"caller: {utterance}\n")
                completed.clear()
                await stream.write(
                    chat_pb2.ChatRequest(
                        user_message=chat_pb2.UserMessage(
                            text=utterance, client_message_id=uuid.uuid4().hex
                        )
                    )
                )
                if barge_in_after is None:
                    await completed.wait()
                    await speaker.idle.wait()  # the caller lets the assistant finish
                    continue
                # The caller talks over the assistant once it has spoken a while.
                await asyncio.wait_for(speaker.speaking.wait(), 30)
                await asyncio.sleep(barge_in_after)
                turn = turns[-1]
                turn.interrupted = True
                speaker.stop()
                out.write(f"(caller barges in after {turn.spoken} characters)\n")
                await stream.write(
                    chat_pb2.ChatRequest(
                        interrupt=chat_pb2.Interrupt(
                            turn_id=turn.turn_id, delivered_code_points=turn.spoken
                        )
                    )
                )
                await completed.wait()
            await stream.write(chat_pb2.ChatRequest(end=chat_pb2.EndChat()))
            await stream.done_writing()
            await asyncio.wait_for(listening, 30)
        finally:
            speaking.cancel()
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaking
    out.write("(call ended)\n")
    return turns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A simulated voice bridge on Fenlo's Chat.")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--workspace", required=True, help="workspace id")
    parser.add_argument("--token", default=os.environ.get("FENLO_TOKEN"), help="$FENLO_TOKEN")
    parser.add_argument("--words-per-second", type=float, default=4.0, help="speaking rate")
    parser.add_argument("--json", action="store_true", help="end with a JSON summary")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: pass --token or set FENLO_TOKEN")
    started = time.monotonic()
    turns = asyncio.run(call(args.target, args.token, args.workspace, args.words_per_second))
    if args.json:
        summary = [
            {
                "turn": t.turn_id,
                "generated": t.text,
                "spoken": t.text[: t.spoken],
                "interrupted": t.interrupted,
            }
            for t in turns
        ]
        print(json.dumps({"turns": summary, "seconds": round(time.monotonic() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
