"""The database: an async engine and sessions that are scoped to one workspace.

A workspace session adds ``workspace_id = :ws`` to every ORM SELECT, UPDATE and
DELETE of a tenant table (``with_loader_criteria``), refuses to flush, INSERT or
UPDATE a row with another workspace's id, and refuses Core (non-ORM) statements
on tenant tables, which the criteria cannot scope. A session without a workspace
refuses any statement on a tenant table (subqueries included) unless it was
opened with an explicit reason (:meth:`Database.unscoped`), which only the
API-key lookup and the platform operations use. So a repository built for one
workspace cannot issue an unscoped query, even by mistake.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import BindParameter, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql import visitors
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.util import await_only

from fenlo_server.errors import Reason, Unavailable
from fenlo_server.storage import sqlite_inline
from fenlo_server.storage.models import Base, TenantScoped

WORKSPACE_KEY = "workspace_id"
UNSCOPED_KEY = "unscoped_reason"
COMMITTED_EVENTS_KEY = "outbox_rows"  # outbox rows the transaction wrote (outbox.py)
log = logging.getLogger("fenlo.storage")
EventsCommitted = Callable[[list[Any]], Awaitable[None]]
_WORKSPACE_COLUMN = "workspace_id"


class _Opaque:
    """A written workspace_id the guard cannot read (positional values, FROM SELECT)."""

    def __repr__(self) -> str:
        return "<a value the guard cannot check>"


_OPAQUE = _Opaque()


class UnscopedQueryError(RuntimeError):
    """A statement on a tenant table ran in a session with no workspace."""


class TenantSession(Session):
    """The sync session class behind every AsyncSession of Fenlo."""


@functools.cache
def _tenant_tables() -> dict[str, str]:
    """Table name -> model name of every mapped tenant model (fixed once mapped)."""
    return {
        mapper.local_table.name: mapper.class_.__name__  # type: ignore[attr-defined]
        for mapper in Base.registry.mappers
        if issubclass(mapper.class_, TenantScoped)
    }


def _tenant_tables_in(statement: Any) -> list[str]:
    """The tenant tables a statement reads or writes anywhere, subqueries included."""
    tenant = _tenant_tables()
    found = {
        tenant[element.name]
        for element in visitors.iterate(statement)
        if isinstance(element, TableClause) and element.name in tenant
    }
    return sorted(found)


def _targets_tenant(state: ORMExecuteState) -> bool:
    mapper = state.bind_mapper
    return mapper is not None and issubclass(mapper.class_, TenantScoped)


def _written_workspaces(state: ORMExecuteState) -> list[Any]:
    """The ``workspace_id`` values an ORM INSERT or UPDATE writes (``_OPAQUE`` if unknown)."""
    statement = state.statement
    rows: list[Any] = []
    if getattr(statement, "select", None) is not None:  # INSERT ... FROM SELECT
        return [_OPAQUE]
    values = getattr(statement, "_values", None)
    if values:
        rows.append(values)
    for batch in getattr(statement, "_multi_values", None) or ():
        rows.extend(batch)
    parameters = state.parameters  # executemany: ORM bulk INSERT / UPDATE by primary key
    if isinstance(parameters, Mapping):
        rows.append(parameters)
    elif parameters:
        rows.extend(parameters)
    written: list[Any] = []
    for row in rows:
        if not isinstance(row, Mapping):
            written.append(_OPAQUE)  # positional values: which one is workspace_id?
            continue
        for key, value in row.items():
            name = key if isinstance(key, str) else getattr(key, "key", None)
            if name == _WORKSPACE_COLUMN:
                written.append(value.value if isinstance(value, BindParameter) else value)
    return written


@event.listens_for(TenantSession, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    workspace = state.session.info.get(WORKSPACE_KEY)
    if workspace is None:
        if state.session.info.get(UNSCOPED_KEY):
            return
        tables = _tenant_tables_in(state.statement)
        if tables:
            raise UnscopedQueryError(
                f"statement on {', '.join(tables)} outside a workspace session"
            )
        return
    if not state.is_orm_statement:
        # with_loader_criteria scopes ORM entities only: a Core statement on a tenant
        # table would see and change every workspace's rows.
        tables = _tenant_tables_in(state.statement)
        if tables:
            raise UnscopedQueryError(
                f"Core statement on {', '.join(tables)} in a workspace session; use an ORM "
                "statement (select(Model), update(Model), ...) so that it is scoped"
            )
        return
    if (state.is_insert or state.is_update) and _targets_tenant(state):
        for value in _written_workspaces(state):
            if not isinstance(value, str) or value != workspace:
                raise UnscopedQueryError(
                    f"{state.bind_mapper.class_.__name__} written with workspace_id "  # type: ignore[union-attr]
                    f"{value!r} in a session of workspace {workspace}"
                )
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(_workspace_criteria(workspace))


@functools.lru_cache(maxsize=4096)
def _workspace_criteria(workspace: str) -> Any:
    """The option that limits every tenant table to ``workspace`` (built once per
    workspace: building it was a tenth of a small statement's cost)."""
    return with_loader_criteria(
        TenantScoped,
        lambda cls: cls.workspace_id == workspace,
        include_aliases=True,
    )


@event.listens_for(TenantSession, "before_flush")
def _check_rows(session: Session, _context: Any, _instances: Any) -> None:
    workspace = session.info.get(WORKSPACE_KEY)
    for obj in list(session.new) + list(session.dirty) + list(session.deleted):
        if not isinstance(obj, TenantScoped):
            continue
        if workspace is None and not session.info.get(UNSCOPED_KEY):
            raise UnscopedQueryError(f"{type(obj).__name__} written outside a workspace session")
        if workspace is not None and obj.workspace_id != workspace:
            raise UnscopedQueryError(
                f"{type(obj).__name__} of workspace {obj.workspace_id} written in a session "
                f"of workspace {workspace}"
            )


def _sqlite_pragmas(busy_ms: int) -> Callable[[Any, Any], None]:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        # Deleted rows are overwritten with zeros, in their pages and in freed pages,
        # instead of lingering in the file until the space is reused: an erasure
        # must not leave the erased text in the database file (docs/data-lifecycle.md).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    return apply


SQLITE_BUSY_SECONDS = 5.0
WAL_TRUNCATE_SECONDS = 2.0
WRITE_GATE_KEY = "fenlo_write_gate"
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")


class SqliteWriteGate:
    """One writing transaction at a time in this process, handed on at once.

    SQLite lets one connection write at a time; another that tries waits in
    SQLite's busy handler, which sleeps 1, 2, 5, ... up to 100 ms between tries,
    so under concurrent writes most of a turn went to sleeping while the lock was
    already free. A transaction takes this gate before its first write (where
    pysqlite begins the transaction; its reads before that see the latest
    commit) and gives it back when its connection returns to the pool, after
    the commit or rollback. Waiting longer than SQLite's busy timeout fails the
    same way SQLite would: the database is unavailable.
    """

    def __init__(self, timeout: float) -> None:
        self._lock = asyncio.Lock()
        self._timeout = timeout

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine.pool, "checkin", self._returned)
        event.listen(engine.pool, "invalidate", self._invalidated)

    async def _acquire(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise _unavailable() from None

    def _before_execute(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        info = conn.info
        if info.get(WRITE_GATE_KEY) or not statement.lstrip()[:6].upper().startswith(_WRITES):
            return
        await_only(self._acquire())
        info[WRITE_GATE_KEY] = True

    def _returned(self, _dbapi_connection: Any, record: Any) -> None:
        if record is not None and record.info.pop(WRITE_GATE_KEY, False):
            self._lock.release()

    def _invalidated(self, _dbapi_connection: Any, record: Any, _exception: Any) -> None:
        self._returned(_dbapi_connection, record)


# SQLSTATE classes of a database that is away rather than of a bad statement:
# connection exceptions (08) and operator intervention (57P: shut down, crashed,
# starting up), which asyncpg raises as plain errors, not OperationalError.
_UNAVAILABLE_SQLSTATES = ("08", "57P")


def connection_lost(exc: DBAPIError) -> bool:
    """Whether ``exc`` means the database is unreachable (retry later)."""
    state = str(getattr(exc.orig, "sqlstate", None) or "")
    return (
        isinstance(exc, OperationalError)
        or exc.connection_invalidated
        or state.startswith(_UNAVAILABLE_SQLSTATES)
    )


def _unavailable() -> Unavailable:
    return Unavailable(
        Reason.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
        "the database is not reachable; retry with backoff",
    )


class Database:
    """Owns the engine; hands out workspace-scoped sessions."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        """A SQLite file is used from the event loop's thread
        (:mod:`~fenlo_server.storage.sqlite_inline`); in-memory SQLite through aiosqlite."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        in_loop = False
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                if "?" not in path:  # URL options: leave the connection to aiosqlite
                    in_loop = True
                    kwargs["async_creator"] = sqlite_inline.creator(path, SQLITE_BUSY_SECONDS)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_timeout=10)
        self.engine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            # In the loop, waits for another process's lock are cooperative (busy 0).
            busy_ms = 0 if in_loop else int(SQLITE_BUSY_SECONDS * 1000)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas(busy_ms))
            SqliteWriteGate(SQLITE_BUSY_SECONDS).attach(self.engine.sync_engine)
        self._sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=TenantSession
        )
        # Called with the outbox rows of every committed transaction that wrote
        # some (the composition root sets it to the event relay).
        self.on_events_committed: EventsCommitted | None = None

    @property
    def sync_engine(self) -> Engine:
        return self.engine.sync_engine

    @asynccontextmanager
    async def workspace(self, workspace_id: str) -> AsyncIterator[AsyncSession]:
        """A transaction scoped to one workspace; commits on success."""
        async with self._session({WORKSPACE_KEY: workspace_id}) as session:
            yield session

    @asynccontextmanager
    async def unscoped(self, reason: str) -> AsyncIterator[AsyncSession]:
        """A transaction that may touch every workspace; ``reason`` says why."""
        async with self._session({UNSCOPED_KEY: reason}) as session:
            yield session

    @asynccontextmanager
    async def _session(self, info: dict[str, Any]) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions(info=info) as session, session.begin():
                yield session
        except DBAPIError as exc:
            if connection_lost(exc):
                raise _unavailable() from exc
            raise
        except OSError as exc:
            raise _unavailable() from exc
        rows = session.info.pop(COMMITTED_EVENTS_KEY, None)
        if rows and self.on_events_committed is not None:
            await self._events_committed(rows)

    async def _events_committed(self, rows: list[Any]) -> None:
        """Hand committed events on; the change is stored, so nothing here may fail it."""
        assert self.on_events_committed is not None
        try:
            await self.on_events_committed(rows)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handing committed events to the relay failed")

    async def truncate_wal(self) -> bool:
        """SQLite: copy the write-ahead log into the database file and truncate it, so
        that the page images it holds from before a deletion do not stay in the
        ``-wal`` file. A writer or a reader of an older snapshot holds it up: it
        tries again for a bounded time, then gives up (logged) and returns False;
        True at once on other databases."""
        if not self.is_sqlite:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAL_TRUNCATE_SECONDS
        while True:
            try:
                async with self.engine.connect() as connection:
                    result = await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                    busy = result.scalar()
            except OperationalError as exc:  # still locked after the busy budget
                log.warning(
                    "the SQLite write-ahead log was not truncated", extra={"error": str(exc)}
                )
                return False
            if not busy:
                return True
            if loop.time() >= deadline:
                log.warning("the SQLite write-ahead log was not truncated (busy)")
                return False
            await asyncio.sleep(0.01)

    async def dispose(self) -> None:
        await self.engine.dispose()
