"""The database: an async engine and sessions that are scoped to one workspace.

A workspace session adds ``workspace_id = :ws`` to every ORM SELECT, UPDATE and
DELETE of a tenant table (``with_loader_criteria``) and refuses to flush a row
of another workspace. A session without a workspace refuses any statement on a
tenant table unless it was opened with an explicit reason
(:meth:`Database.unscoped`), which only the API-key lookup and the platform
operations use. So a repository built for one workspace cannot issue an
unscoped query, even by mistake.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from fenlo_server.errors import Reason, Unavailable
from fenlo_server.storage.models import TenantScoped

WORKSPACE_KEY = "workspace_id"
UNSCOPED_KEY = "unscoped_reason"


class UnscopedQueryError(RuntimeError):
    """A statement on a tenant table ran in a session with no workspace."""


class TenantSession(Session):
    """The sync session class behind every AsyncSession of Fenlo."""


@event.listens_for(TenantSession, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    workspace = state.session.info.get(WORKSPACE_KEY)
    if workspace is None:
        if state.session.info.get(UNSCOPED_KEY):
            return
        for mapper in state.all_mappers:
            if issubclass(mapper.class_, TenantScoped):
                raise UnscopedQueryError(
                    f"query on {mapper.class_.__name__} outside a workspace session"
                )
        return
    state.statement = state.statement.options(
        with_loader_criteria(
            TenantScoped,
            lambda cls: cls.workspace_id == workspace,
            include_aliases=True,
        )
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _unavailable() -> Unavailable:
    return Unavailable(
        Reason.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
        "the database is not reachable; retry with backoff",
    )


class Database:
    """Owns the engine; hands out workspace-scoped sessions."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_timeout=10)
        self.engine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=TenantSession
        )

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
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise _unavailable() from exc
            raise
        except OSError as exc:
            raise _unavailable() from exc

    async def dispose(self) -> None:
        await self.engine.dispose()
