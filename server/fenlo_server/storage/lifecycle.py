"""A workspace's data from retention to erasure: the database side.

Everything here runs in workspace sessions (so the tenancy guard scopes every
statement) and in bounded batches: a retention run or an export never holds
more than one batch of rows in memory, whatever the size of the workspace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Text, and_, case, cast, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.storage.models import (
    ApiKeyRow,
    Base,
    ConversationRow,
    LeadRow,
    MessageRow,
    OutboxEventRow,
    TenantScoped,
    WebhookDeliveryRow,
    WorkspaceRow,
)

# How many conversation ids one statement that matches event payloads names.
_PAYLOAD_MATCH_BATCH = 50


@dataclass(slots=True)
class Pruned:
    """What one retention pass over a workspace removed."""

    messages: int = 0
    conversations: int = 0
    leads: int = 0
    events: int = 0
    deliveries: int = 0  # webhook deliveries
    done: bool = True  # False: the batch limit was hit; the next run goes on

    def add(self, other: Pruned) -> None:
        self.messages += other.messages
        self.conversations += other.conversations
        self.leads += other.leads
        self.events += other.events
        self.deliveries += other.deliveries
        self.done = self.done and other.done


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_messages(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` messages created before ``cutoff``, oldest first, and
    lower their conversations' message counts; return how many were deleted."""
    rows = (
        await session.execute(
            select(MessageRow.id, MessageRow.conversation_id)
            .where(MessageRow.create_time < cutoff)
            .order_by(MessageRow.create_time, MessageRow.id)
            .limit(limit)
        )
    ).all()
    if not rows:
        return 0
    await session.execute(delete(MessageRow).where(MessageRow.id.in_([r[0] for r in rows])))
    per_conversation: dict[str, int] = {}
    for _, conversation_id in rows:
        per_conversation[conversation_id] = per_conversation.get(conversation_id, 0) + 1
    for conversation_id, count in per_conversation.items():
        remaining = ConversationRow.message_count - count
        await session.execute(
            update(ConversationRow)
            .where(ConversationRow.id == conversation_id)
            .values(message_count=case((remaining > 0, remaining), else_=0))
        )
    return len(rows)


async def prune_conversations(
    session: AsyncSession, cutoff: datetime, limit: int
) -> tuple[int, int]:
    """Delete up to ``limit`` conversations created and last changed before
    ``cutoff`` that have no message left, with their leads; return (conversations,
    leads) deleted."""
    has_message = select(MessageRow.id).where(MessageRow.conversation_id == ConversationRow.id)
    ids = list(
        (
            await session.execute(
                select(ConversationRow.id)
                .where(
                    ConversationRow.create_time < cutoff,
                    ConversationRow.update_time < cutoff,
                    ~has_message.exists(),
                )
                .order_by(ConversationRow.create_time, ConversationRow.id)
                .limit(limit)
            )
        ).scalars()
    )
    if not ids:
        return 0, 0
    leads = await session.execute(delete(LeadRow).where(LeadRow.conversation_id.in_(ids)))
    await session.execute(delete(ConversationRow).where(ConversationRow.id.in_(ids)))
    return len(ids), _rowcount(leads)


async def prune_events(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` outbox events created before ``cutoff``."""
    ids = list(
        (
            await session.execute(
                select(OutboxEventRow.id)
                .where(OutboxEventRow.create_time < cutoff)
                .order_by(OutboxEventRow.create_time, OutboxEventRow.id)
                .limit(limit)
            )
        ).scalars()
    )
    if not ids:
        return 0
    await session.execute(delete(OutboxEventRow).where(OutboxEventRow.id.in_(ids)))
    return len(ids)


@dataclass(frozen=True, slots=True)
class Erased:
    """What an erasure removed."""

    conversation_ids: list[str]
    messages: int
    leads: int
    events: int
    lead_ids: list[str] = field(default_factory=list)

    def payload_names(self) -> list[str]:
        """What the payloads of the erased events contain (see :func:`payload_names`)."""
        return payload_names(self.conversation_ids, self.lead_ids)


def payload_names(conversation_ids: Sequence[str], lead_ids: Sequence[str] = ()) -> list[str]:
    """The resource-name fragments an event payload names these rows by. Ids are
    lower-case base32, so a text match on ``/conversations/{id}`` is exact."""
    return [f"/conversations/{c}" for c in conversation_ids] + [
        f"/leads/{lead}" for lead in lead_ids
    ]


async def delete_events_naming(
    session: AsyncSession, conversation_ids: Sequence[str], lead_ids: Sequence[str] = ()
) -> int:
    """Delete the outbox events whose payload names one of the conversations (or a
    message under one) or one of the leads (by :func:`payload_names`)."""
    patterns = [f"%{name}%" for name in payload_names(conversation_ids, lead_ids)]
    deleted = 0
    payload = cast(OutboxEventRow.payload, Text)
    for start in range(0, len(patterns), _PAYLOAD_MATCH_BATCH):
        batch = patterns[start : start + _PAYLOAD_MATCH_BATCH]
        result = await session.execute(
            delete(OutboxEventRow).where(or_(*[payload.like(p) for p in batch]))
        )
        deleted += _rowcount(result)
        # The webhook deliveries of those events keep the body that was sent.
        body = WebhookDeliveryRow.body
        await session.execute(delete(WebhookDeliveryRow).where(or_(*[body.like(p) for p in batch])))
    return deleted


async def erase_contact(session: AsyncSession, external_contact_id: str) -> Erased:
    """Delete every conversation of the contact with its messages, leads and the
    events that name them. The conversations are locked first (FOR UPDATE on
    PostgreSQL), so a turn being stored concurrently either commits before (and
    is erased too) or finds its conversation gone."""
    ids = list(
        (
            await session.execute(
                select(ConversationRow.id)
                .where(ConversationRow.external_contact_id == external_contact_id)
                .order_by(ConversationRow.id)
                .with_for_update()
            )
        ).scalars()
    )
    if not ids:
        return Erased([], 0, 0, 0)
    lead_ids = list(
        (
            await session.execute(select(LeadRow.id).where(LeadRow.conversation_id.in_(ids)))
        ).scalars()
    )
    messages = await session.execute(delete(MessageRow).where(MessageRow.conversation_id.in_(ids)))
    leads = await session.execute(delete(LeadRow).where(LeadRow.conversation_id.in_(ids)))
    events = await delete_events_naming(session, ids, lead_ids)
    await session.execute(delete(ConversationRow).where(ConversationRow.id.in_(ids)))
    return Erased(ids, _rowcount(messages), _rowcount(leads), events, lead_ids)


def tenant_models() -> list[type[TenantScoped]]:
    """Every tenant model, children before parents (the order to delete in)."""
    by_table = {
        mapper.local_table.name: mapper.class_  # type: ignore[attr-defined]
        for mapper in Base.registry.mappers
        if issubclass(mapper.class_, TenantScoped)
    }
    ordered = [t.name for t in reversed(Base.metadata.sorted_tables)]
    return [by_table[name] for name in ordered if name in by_table]


async def api_key_hashes(session: AsyncSession) -> list[str]:
    """The secret hashes of the workspace's API keys (what caches key them by)."""
    return list((await session.execute(select(ApiKeyRow.secret_hash))).scalars())


async def delete_workspace_rows(session: AsyncSession, workspace_id: str) -> bool:
    """Delete every row of the workspace in every tenant table, then the workspace.

    Explicit rather than left to ``ON DELETE CASCADE``: a table that forgets its
    foreign key still loses the workspace's rows. Returns False when the
    workspace did not exist.
    """
    if await session.get(WorkspaceRow, workspace_id) is None:
        return False
    for model in tenant_models():
        await session.execute(delete(model))  # scoped to the session's workspace
    await session.execute(delete(WorkspaceRow).where(WorkspaceRow.id == workspace_id))
    return True


@dataclass(frozen=True, slots=True)
class ExportFilter:
    create_time_start: datetime | None = None
    create_time_end: datetime | None = None
    external_contact_id: str | None = None


async def conversations_after(
    session: AsyncSession,
    filters: ExportFilter,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[ConversationRow]:
    """The next ``limit`` conversations in creation order after ``after``
    (a (create_time, id) cursor)."""
    query = (
        select(ConversationRow)
        .order_by(ConversationRow.create_time, ConversationRow.id)
        .limit(limit)
    )
    if filters.create_time_start is not None:
        query = query.where(ConversationRow.create_time >= filters.create_time_start)
    if filters.create_time_end is not None:
        query = query.where(ConversationRow.create_time < filters.create_time_end)
    if filters.external_contact_id is not None:
        query = query.where(ConversationRow.external_contact_id == filters.external_contact_id)
    if after is not None:
        time, last_id = after
        query = query.where(
            or_(
                ConversationRow.create_time > time,
                and_(ConversationRow.create_time == time, ConversationRow.id > last_id),
            )
        )
    return list((await session.execute(query)).scalars())
