"""The transactional outbox: events written with the change they describe."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.events.types import Event
from fenlo_server.ids import new_id
from fenlo_server.storage.models import OutboxEventRow, WorkspaceRow, utcnow
from fenlo_server.storage.repositories import workspace_of


async def append_events(session: AsyncSession, events: Sequence[Event]) -> list[OutboxEventRow]:
    """Write ``events`` in the session's transaction with the workspace's next
    sequence numbers (allocated atomically, so they are gap-free and ordered)."""
    if not events:
        return []
    workspace_id = workspace_of(session)
    result = await session.execute(
        update(WorkspaceRow)
        .where(WorkspaceRow.id == workspace_id)
        .values(event_seq=WorkspaceRow.event_seq + len(events))
        .returning(WorkspaceRow.event_seq)
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
    return rows
