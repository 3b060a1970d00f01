"""The transactional outbox: events written with the change they describe.

The rows a transaction appends are remembered on its session; once it has
committed, :class:`~fenlo_server.storage.db.Database` hands them to its
``on_events_committed`` callback (the relay: the local bus at once, Redis soon
after). A transaction that rolls back hands over nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Integer, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.events.types import Event
from fenlo_server.ids import new_id
from fenlo_server.storage.db import COMMITTED_EVENTS_KEY
from fenlo_server.storage.models import OutboxEventRow, WorkspaceRow, utcnow
from fenlo_server.storage.repositories import workspace_of

# Built once: building the statement cost as much as running it.
_TAKE_SEQUENCE = (
    update(WorkspaceRow)
    .where(WorkspaceRow.id == bindparam("workspace_id"))
    .values(event_seq=WorkspaceRow.event_seq + bindparam("count", type_=Integer))
    .returning(WorkspaceRow.event_seq)
    .execution_options(synchronize_session=False)  # no loaded workspace to update
)


async def append_events(session: AsyncSession, events: Sequence[Event]) -> list[OutboxEventRow]:
    """Write ``events`` in the session's transaction with the workspace's next
    sequence numbers (allocated atomically, so they are gap-free and ordered)."""
    if not events:
        return []
    workspace_id = workspace_of(session)
    result = await session.execute(
        _TAKE_SEQUENCE, {"workspace_id": workspace_id, "count": len(events)}
    )
    last = int(result.scalar_one())
    now = utcnow()
    rows = [
        OutboxEventRow(
            id=new_id(),
            workspace_id=workspace_id,
            seq=last - len(events) + i + 1,
            type=event.type,
            payload=event.payload,
            create_time=now,
        )
        for i, event in enumerate(events)
    ]
    session.add_all(rows)
    await session.flush()
    session.info.setdefault(COMMITTED_EVENTS_KEY, []).extend(rows)
    return rows


# -- reading the outbox -------------------------------------------------------------
#
# The relay's queries run in an *unscoped* session (Database.unscoped): publishing
# is a system task with no caller, and one relay serves every workspace. They only
# read events and set ``published_time``; what leaves the relay is keyed by each
# row's own workspace (the local bus event, ``fenlo:ws:{workspace}:events``), so
# no workspace's events are mixed into another's. Readers on behalf of a caller
# (StreamEvents) use :func:`events_after` in a workspace session.


async def claim_unpublished(session: AsyncSession, limit: int) -> list[OutboxEventRow]:
    """The oldest unpublished events (by id, which is time-ordered), locked for this
    transaction. On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several relays run
    at once, each taking other rows; SQLite ignores the clause (one writer at a time
    anyway, and a second relay on the same file only causes duplicates, which every
    consumer drops by id)."""
    query = select(OutboxEventRow).where(OutboxEventRow.published_time.is_(None))
    query = query.order_by(OutboxEventRow.id).limit(limit).with_for_update(skip_locked=True)
    return list((await session.execute(query)).scalars())


async def unpublished_after(
    session: AsyncSession, after_id: str, created_since: datetime, limit: int
) -> list[OutboxEventRow]:
    """Unpublished events created since ``created_since`` with ids above ``after_id``
    (no lock: for the local bus while Redis is away)."""
    query = (
        select(OutboxEventRow)
        .where(
            OutboxEventRow.published_time.is_(None),
            OutboxEventRow.create_time >= created_since,
            OutboxEventRow.id > after_id,
        )
        .order_by(OutboxEventRow.id)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def mark_published(session: AsyncSession, ids: Sequence[str], when: datetime) -> None:
    if ids:
        await session.execute(
            update(OutboxEventRow)
            .where(OutboxEventRow.id.in_(list(ids)))
            .values(published_time=when)
            .execution_options(synchronize_session=False)
        )


async def recent_published(
    session: AsyncSession, created_since: datetime, limit: int
) -> list[OutboxEventRow]:
    """The newest ``limit`` published events created since ``created_since``, oldest first."""
    query = (
        select(OutboxEventRow)
        .where(
            OutboxEventRow.published_time.is_not(None),
            OutboxEventRow.create_time >= created_since,
        )
        .order_by(OutboxEventRow.id.desc())
        .limit(limit)
    )
    rows = list((await session.execute(query)).scalars())
    rows.reverse()
    return rows


async def events_after(session: AsyncSession, after_seq: int, limit: int) -> list[OutboxEventRow]:
    """The session's workspace's events with ``seq > after_seq``, in sequence order."""
    query = (
        select(OutboxEventRow)
        .where(OutboxEventRow.seq > after_seq)
        .order_by(OutboxEventRow.seq)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())
