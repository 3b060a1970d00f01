"""The baseline: a bare ``grpc.aio`` ChatService with Fenlo's bidi shape and no pipeline.

Each user message is answered like Fenlo's offline provider answers it — a
``turn_started``, then ``tokens`` deltas paced at ``rate`` tokens a second (the
first at once), then ``turn_completed`` — with nothing else: no auth, no
database, no events. A stream may ask for its own token count with the start
metadata ``tokens`` (so a workspace whose answers are longer is compared with
a baseline answering as long). Run in its own process::

    python -m fenlo_server.bench.baseline --tokens 20 --rate 500 [--loop uvloop]

It prints ``{"port": N}`` on one line once it listens, and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from fenlo.v1 import chat_pb2, chat_pb2_grpc, conversation_pb2
from fenlo_server.loops import run_on


class BaselineChat(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.interval = 1.0 / rate if rate > 0 else 0.0

    async def Chat(
        self,
        request_iterator: AsyncIterator[chat_pb2.ChatRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        tokens = self.tokens
        conversation = f"workspaces/baseline/conversations/{uuid.uuid4().hex}"
        async for request in request_iterator:
            kind = request.WhichOneof("kind")
            if kind == "start":
                wanted = request.start.metadata.get("tokens")
                if wanted:
                    tokens = int(wanted)
                yield chat_pb2.ChatResponse(
                    session_started=chat_pb2.SessionStarted(
                        conversation=conversation_pb2.Conversation(name=conversation)
                    )
                )
            elif kind == "user_message":
                turn = uuid.uuid4().hex
                yield chat_pb2.ChatResponse(
                    turn_started=chat_pb2.TurnStarted(
                        turn_id=turn,
                        client_message_id=request.user_message.client_message_id,
                    )
                )
                started = time.monotonic()
                for i in range(tokens):
                    if self.interval:
                        delay = started + i * self.interval - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    yield chat_pb2.ChatResponse(
                        delta=chat_pb2.TextDelta(turn_id=turn, text=" word", index=i)
                    )
                yield chat_pb2.ChatResponse(turn_completed=chat_pb2.TurnCompleted(turn_id=turn))
            elif kind == "end":
                return


async def serve(port: int, tokens: int, rate: float) -> None:
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    chat_pb2_grpc.add_ChatServiceServicer_to_server(BaselineChat(tokens, rate), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=20, help="deltas a turn")
    parser.add_argument("--rate", type=float, default=500.0, help="tokens a second; 0: unpaced")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    run_on(args.loop, serve(args.port, args.tokens, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
