"""A small OpenAI-compatible chat-completions server whose behaviour a test scripts.

It speaks HTTP/1.1 on 127.0.0.1 with Server-Sent Events in a chunked body, under
OpenAI's path (``/v1/chat/completions``) and Groq's (``/openai/v1/chat/completions``),
so the real ``openai`` and ``groq`` SDKs can be pointed at it through ``base_url``.
Each request takes the next scripted :class:`Reply` (or the default one). It
records every request and notices when a client closes its connection.

It also answers OpenAI's ``/v1/embeddings`` with deterministic vectors
(:func:`fake_embedding`, not normalised, in the requested ``encoding_format``);
a scripted :class:`Reply`'s ``status``, ``hang`` and ``first_delay`` apply there too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PATHS = ("/v1/chat/completions", "/openai/v1/chat/completions")
EMBEDDING_PATHS = ("/v1/embeddings",)


def fake_embedding(text: str, dimensions: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The vector the fake server gives ``text``: seeded by its hash, not normalised."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)


@dataclass
class Reply:
    """How the server answers one request."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " model", "."])
    status: int = 200
    error_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # accept the request, never send a byte
    first_delay: float = 0.0  # before the first token
    token_delay: float = 0.0  # before every later token
    cut_after: int | None = None  # abort the connection after N tokens (a broken body)
    end_after: int | None = None  # end the body cleanly after N tokens: no finish, no [DONE]
    stall_after: int | None = None  # after N tokens, go silent with the connection open
    malformed_after: int | None = None  # after N tokens, an event that is not JSON
    error_event_after: int | None = None  # after N tokens, an `error` event
    repeat_last_words: int = 0  # a continuation first restates the prefill's last N words
    finish_reason: str = "stop"
    usage: bool = True


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    received: float
    disconnected: float | None = None  # when the client closed the connection early
    tokens_sent: int = 0  # answer tokens written to the connection (and drained) so far

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


class FakeLlmServer:
    def __init__(self, default: Reply | None = None, *, embedding_dimensions: int = 1536) -> None:
        self.default = default or Reply()
        self.embedding_dimensions = embedding_dimensions  # unless a request asks for others
        self.replies: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def groq_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> FakeLlmServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeLlmServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_disconnect(self, seen: Seen, within: float = 2.0) -> float:
        """Seconds until the client closed ``seen``'s connection (bounded wait)."""
        deadline = time.monotonic() + within
        while seen.disconnected is None:
            if time.monotonic() > deadline:
                raise AssertionError("the client never closed the connection")
            await asyncio.sleep(0.01)
        return seen.disconnected

    # -- HTTP ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        length = int(headers.get("content-length", "0"))
        body = json.loads(await reader.readexactly(length)) if length else {}
        seen = Seen(path, body, headers, time.monotonic())
        self.requests.append(seen)
        if method == "POST" and path in EMBEDDING_PATHS:
            reply = self.replies.popleft() if self.replies else self.default
            await self._embeddings(reply, seen, reader, writer)
            return
        if method != "POST" or path not in PATHS:
            await self._plain(writer, 404, {"error": {"message": f"no route {path}"}}, {})
            return
        reply = self.replies.popleft() if self.replies else self.default
        closed = asyncio.Event()

        async def watch() -> None:  # the client closing its side ends the read with b""
            with contextlib.suppress(Exception):
                while await reader.read(1024):
                    pass
            seen.disconnected = time.monotonic()
            closed.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._reply(reply, seen, writer, closed)
        finally:
            watcher.cancel()

    async def _embeddings(
        self,
        reply: Reply,
        seen: Seen,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if reply.hang:  # until the client gives up and closes the connection
            with contextlib.suppress(Exception):
                while await reader.read(1024):
                    pass
            seen.disconnected = time.monotonic()
            return
        if reply.first_delay:
            await asyncio.sleep(reply.first_delay)
        if reply.status != 200:
            body = reply.error_body or {
                "error": {"message": f"scripted status {reply.status}", "type": "test"}
            }
            await self._plain(writer, reply.status, body, reply.headers)
            return
        inputs = seen.body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        dimensions = int(seen.body.get("dimensions") or self.embedding_dimensions)
        as_base64 = seen.body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = fake_embedding(str(text), dimensions)
            embedding: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if as_base64
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(str(text).split()) for text in inputs)
        body = {
            "object": "list",
            "data": data,
            "model": seen.body.get("model", "test-embedding"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await self._plain(writer, 200, body, reply.headers)

    async def _plain(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        data = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n{extra}connection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def _reply(
        self, reply: Reply, seen: Seen, writer: asyncio.StreamWriter, closed: asyncio.Event
    ) -> None:
        if reply.hang:
            await closed.wait()
            return
        if reply.status != 200:
            body = reply.error_body or {
                "error": {"message": f"scripted status {reply.status}", "type": "test"}
            }
            await self._plain(writer, reply.status, body, reply.headers)
            return
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
        writer.write(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            f"transfer-encoding: chunked\r\n{extra}connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        model = seen.body.get("model", "test-model")
        tokens = list(reply.tokens)
        if reply.repeat_last_words:
            prefill = seen.messages[-1]["content"] if seen.messages else ""
            if seen.messages and seen.messages[-1].get("role") == "assistant":
                words = prefill.split(" ")[-reply.repeat_last_words :]
                tokens = [" ".join(words), *tokens]
        for i, token in enumerate(tokens):
            if reply.cut_after == i:
                writer.transport.abort()
                return
            if reply.end_after == i:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return
            if reply.stall_after == i:
                await closed.wait()
                return
            if reply.malformed_after == i:
                await self._chunk(writer, "data: {this is not json\n\n")
                await self._end(writer)
                return
            if reply.error_event_after == i:
                error = {"error": {"message": "the model is overloaded", "type": "server_error"}}
                await self._chunk(writer, f"data: {json.dumps(error)}\n\n")
                await self._end(writer)
                return
            delay = reply.first_delay if i == 0 else reply.token_delay
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), delay)
            if closed.is_set():
                return
            await self._event(writer, model, {"role": "assistant", "content": token}, None)
            seen.tokens_sent += 1
        await self._event(writer, model, {}, reply.finish_reason, usage=reply.usage, n=len(tokens))
        await self._chunk(writer, "data: [DONE]\n\n")
        await self._end(writer)

    async def _event(
        self,
        writer: asyncio.StreamWriter,
        model: str,
        delta: dict[str, Any],
        finish: str | None,
        *,
        usage: bool = False,
        n: int = 0,
    ) -> None:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            counts = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
            chunk["usage"] = counts
            chunk["x_groq"] = {"id": "req-test", "usage": counts}
        await self._chunk(writer, f"data: {json.dumps(chunk)}\n\n")

    async def _chunk(self, writer: asyncio.StreamWriter, text: str) -> None:
        data = text.encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()

    async def _end(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
