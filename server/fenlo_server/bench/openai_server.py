"""A small local OpenAI-compatible chat-completions server for the benchmarks.

It speaks HTTP/1.1 on 127.0.0.1 (port 0 by default) with keep-alive, and
answers ``POST /v1/chat/completions`` (and Groq's ``/openai/v1/...`` path)
with ``stream: true`` as Server-Sent Events in a chunked body: ``chunks``
content chunks, no delay, a final chunk with ``finish_reason: "stop"`` (and a
usage chunk when ``stream_options.include_usage`` is asked for), then
``data: [DONE]``. The events are encoded once, so the server costs as little
CPU as it can per reply.

It can play a failing provider: :attr:`LocalOpenAIServer.mode` ``"http_500"``
answers HTTP 500 with an OpenAI error body, ``"drop"`` aborts the connection
once the request is read. :attr:`failure_times` records when each failure was
written (``time.perf_counter()``, CLOCK_MONOTONIC: comparable across processes
on one machine).

``python -m fenlo_server.bench.openai_server [--chunks N] [--mode M]`` runs one
in its own process and prints ``PORT <n>`` once listening, so a benchmark can
keep the server's CPU out of its own ``time.process_time()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Literal

Mode = Literal["ok", "http_500", "drop"]
MODES: tuple[Mode, ...] = ("ok", "http_500", "drop")
PATHS = ("/v1/chat/completions", "/openai/v1/chat/completions")
TOKEN = "tok "  # the text of every content chunk


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse(payload: dict[str, object]) -> bytes:
    return _http_chunk(f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode())


def _chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class LocalOpenAIServer:
    def __init__(self, chunks: int = 50, mode: Mode = "ok") -> None:
        self.chunks = chunks
        self.mode: Mode = mode
        self.port = 0
        self.requests = 0  # chat-completions requests received
        self.replies = 0  # complete streamed replies written
        self.chunks_sent = 0  # content chunks written, over all replies
        self.failure_times: list[float] = []  # perf_counter() of each failure written
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._encode()

    def _encode(self) -> None:
        self._head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        first = _sse(_chunk({"role": "assistant", "content": TOKEN}, None))
        rest = _sse(_chunk({"content": TOKEN}, None))
        self._body = first + rest * max(self.chunks - 1, 0) if self.chunks else b""
        self._finish = _sse(_chunk({}, "stop"))
        usage = _chunk({}, None)
        usage["choices"] = []
        usage["usage"] = {
            "prompt_tokens": 10,
            "completion_tokens": self.chunks,
            "total_tokens": 10 + self.chunks,
        }
        self._usage = _sse(usage)
        self._done = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    @property
    def base_url(self) -> str:
        """The ``base_url`` for ``AsyncOpenAI``."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, port: int = 0) -> LocalOpenAIServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in self._connections.values():  # their reads end: the tasks finish
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> LocalOpenAIServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is over."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed an idle keep-alive connection
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        if method != "POST" or path not in PATHS:
            self._plain(writer, 404, {"error": {"message": f"no route {path}", "type": "bench"}})
            await writer.drain()
            return True
        self.requests += 1
        if self.mode == "drop":
            writer.transport.abort()
            self.failure_times.append(time.perf_counter())
            return False
        if self.mode == "http_500":
            self._plain(
                writer, 500, {"error": {"message": "the primary is down", "type": "server_error"}}
            )
            await writer.drain()
            self.failure_times.append(time.perf_counter())
            return True
        body = json.loads(raw) if raw else {}
        options = body.get("stream_options") or {}
        writer.write(self._head + self._body + self._finish)
        if options.get("include_usage"):
            writer.write(self._usage)
        writer.write(self._done)
        await writer.drain()
        self.replies += 1
        self.chunks_sent += self.chunks
        return True

    def _plain(self, writer: asyncio.StreamWriter, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n\r\n".encode()
            + data
        )


async def _main(chunks: int, mode: Mode, port: int) -> None:
    server = await LocalOpenAIServer(chunks, mode).start(port)
    print(f"PORT {server.port}", flush=True)
    try:
        await asyncio.Event().wait()  # until the process is terminated
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.chunks, args.mode, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
