"""The SQLite write gate: concurrent writing transactions take turns in the process
instead of in SQLite's sleeping busy handler."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from fenlo_server.errors import Unavailable
from fenlo_server.storage import db as db_module
from fenlo_server.storage import migrate
from fenlo_server.storage.db import Database
from fenlo_server.storage.repositories import ConversationRepository, WorkspaceStore


def _no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
    # SQLite itself refuses a second writer at once ("database is locked"), so only
    # the gate can make concurrent writers succeed.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()


async def _database(tmp_path: Path) -> tuple[Database, str, list[str]]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}")
    event.listen(db.engine.sync_engine, "connect", _no_busy_wait)
    await migrate.upgrade(db)
    async with db.unscoped("test") as session:
        workspace = (
            await WorkspaceStore(session).create(display_name="Gate", settings={}, quotas={})
        ).id
    conversations = []
    for _ in range(8):
        async with db.workspace(workspace) as session:
            row = await ConversationRepository(session).create(
                channel="API", external_contact_id="", labels={}, state="OPEN"
            )
            conversations.append(row.id)
    return db, workspace, conversations


async def test_concurrent_writers_take_turns_without_sqlite_refusing_one(tmp_path: Path) -> None:
    db, workspace, conversations = await _database(tmp_path)
    try:

        async def writer(conversation: str) -> None:
            for _ in range(5):
                async with db.workspace(workspace) as session:
                    repo = ConversationRepository(session)
                    await repo.get(conversation)  # a read before the first write
                    await repo.append_message(conversation, role="USER", text="hello")
                    await asyncio.sleep(0.001)  # others run while this one holds the lock
                    await repo.append_message(conversation, role="ASSISTANT", text="hi")

        async with asyncio.timeout(60):
            await asyncio.gather(*(writer(c) for c in conversations))
        for conversation in conversations:
            async with db.workspace(workspace) as session:
                row = await ConversationRepository(session).get(conversation)
            assert row is not None and row.message_count == 10
    finally:
        await db.dispose()


async def test_a_writer_held_up_past_the_busy_timeout_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_SECONDS", 0.2)
    db, workspace, (first, second, *_) = await _database(tmp_path)
    try:
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with db.workspace(workspace) as session:
                await ConversationRepository(session).append_message(first, role="USER", text="a")
                holding.set()
                await release.wait()

        task = asyncio.create_task(holder())
        await holding.wait()
        with pytest.raises(Unavailable):
            async with db.workspace(workspace) as session:
                await ConversationRepository(session).append_message(second, role="USER", text="b")
        release.set()
        await task
        # The gate is free again once the holder committed.
        async with db.workspace(workspace) as session:
            await ConversationRepository(session).append_message(second, role="USER", text="c")
    finally:
        await db.dispose()


async def _writer_while_locked(
    tmp_path: Path, hold: float
) -> tuple[list[float], float, BaseException | None]:
    """Hold SQLite's write lock from another connection (as another process would)
    for ``hold`` seconds while this process writes; the loop's heartbeats, when the
    lock was taken, and the write's outcome."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    await migrate.upgrade(db)
    async with db.unscoped("test") as session:
        workspace = (
            await WorkspaceStore(session).create(display_name="Busy", settings={}, quotas={})
        ).id
    other = sqlite3.connect(tmp_path / "other.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, held by "another process"
    locked_at = time.monotonic()
    beats: list[float] = []

    async def heartbeat() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def release() -> None:
        await asyncio.sleep(hold)
        other.execute("COMMIT")

    beat = asyncio.create_task(heartbeat())
    releaser = asyncio.create_task(release())
    outcome: BaseException | None = None
    try:
        async with db.workspace(workspace) as session:
            await ConversationRepository(session).create(
                channel="API", external_contact_id="", labels={}, state="OPEN"
            )
    except BaseException as error:  # the test looks at it
        outcome = error
    finally:
        beat.cancel()
        await releaser
        other.close()
        await db.dispose()
    return beats, locked_at, outcome


async def test_a_write_waits_for_another_process_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    beats, locked_at, outcome = await _writer_while_locked(tmp_path, hold=0.3)
    assert outcome is None
    assert time.monotonic() - locked_at >= 0.3  # it did wait for the lock
    # The loop kept running meanwhile (SQLite's own busy handler would have held it).
    assert len([t for t in beats if locked_at <= t < locked_at + 0.3]) >= 10


async def test_a_write_locked_out_past_the_busy_budget_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_SECONDS", 0.2)
    beats, locked_at, outcome = await _writer_while_locked(tmp_path, hold=0.6)
    assert isinstance(outcome, Unavailable)
    assert len([t for t in beats if t >= locked_at]) >= 10
