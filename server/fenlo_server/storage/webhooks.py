"""Webhooks and their deliveries. Repositories are workspace-scoped; the one
cross-workspace query (which deliveries are due) needs an unscoped session."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.ids import new_id
from fenlo_server.storage.db import UNSCOPED_KEY
from fenlo_server.storage.models import (
    OutboxEventRow,
    WebhookDeliveryRow,
    WebhookRow,
    WorkspaceRow,
    utcnow,
)
from fenlo_server.storage.repositories import DuplicateRequest, workspace_of

PENDING = "PENDING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
DEAD_LETTER = "DEAD_LETTER"
STATES = (PENDING, SUCCEEDED, FAILED, DEAD_LETTER)


class WebhookRepository:
    """One workspace's webhooks and deliveries."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.workspace_id = workspace_of(session)

    async def create(
        self,
        *,
        webhook_id: str,
        url: str,
        event_types: list[str],
        description: str,
        enabled: bool,
        secret_ciphertext: str,
        request_id: str | None,
        request_hash: str | None,
    ) -> WebhookRow:
        now = utcnow()
        row = WebhookRow(
            id=webhook_id,
            # Events from now on; the older ones are not this webhook's.
            event_seq=await self.current_seq(),
            workspace_id=self.workspace_id,
            url=url,
            event_types=event_types,
            description=description,
            enabled=enabled,
            disabled_reason="",
            secret_ciphertext=secret_ciphertext,
            request_id=request_id,
            request_hash=request_hash,
            create_time=now,
            update_time=now,
        )
        self._session.add(row)
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise DuplicateRequest from exc
        return row

    async def current_seq(self) -> int:
        """The workspace's newest event sequence number."""
        result = await self._session.execute(
            select(WorkspaceRow.event_seq).where(WorkspaceRow.id == self.workspace_id)
        )
        return int(result.scalar_one_or_none() or 0)

    async def advance(self, webhook_ids: list[str], seq: int) -> None:
        """Record that events up to ``seq`` have been matched against these webhooks."""
        if webhook_ids:
            await self._session.execute(
                update(WebhookRow)
                .where(WebhookRow.id.in_(webhook_ids), WebhookRow.event_seq < seq)
                .values(event_seq=seq)
                .execution_options(synchronize_session=False)
            )

    async def find_by_request_id(self, request_id: str) -> WebhookRow | None:
        result = await self._session.execute(
            select(WebhookRow).where(WebhookRow.request_id == request_id)
        )
        return result.scalar_one_or_none()

    async def get(self, webhook_id: str) -> WebhookRow | None:
        result = await self._session.execute(select(WebhookRow).where(WebhookRow.id == webhook_id))
        return result.scalar_one_or_none()

    async def list_page(self, *, limit: int, before_id: str | None) -> list[WebhookRow]:
        query = select(WebhookRow).order_by(WebhookRow.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(WebhookRow.id < before_id)
        return list((await self._session.execute(query)).scalars())

    async def enabled(self) -> list[WebhookRow]:
        """The workspace's enabled webhooks."""
        query = select(WebhookRow).where(WebhookRow.enabled.is_(True))
        return list((await self._session.execute(query)).scalars())

    async def save(self, row: WebhookRow) -> WebhookRow:
        row.update_time = utcnow()
        await self._session.flush()
        return row

    async def delete(self, webhook_id: str) -> bool:
        row = await self.get(webhook_id)
        if row is None:
            return False
        await self._session.delete(row)
        await self._session.flush()
        return True

    # Deliveries

    async def add_deliveries(
        self,
        webhook_ids: list[str],
        *,
        event_id: str,
        event_seq: int,
        event_type: str,
        body: str,
    ) -> list[WebhookDeliveryRow]:
        """A PENDING delivery of the event for each webhook that has none yet."""
        if not webhook_ids:
            return []
        existing = {hook for hook, _event in await self.recorded(webhook_ids, [event_id])}
        return await self.add_pending(
            [h for h in webhook_ids if h not in existing],
            event_id=event_id,
            event_seq=event_seq,
            event_type=event_type,
            body=body,
        )

    async def recorded(self, webhook_ids: list[str], event_ids: list[str]) -> set[tuple[str, str]]:
        """The (webhook, event) pairs among these that have a delivery already."""
        if not webhook_ids or not event_ids:
            return set()
        result = await self._session.execute(
            select(WebhookDeliveryRow.webhook_id, WebhookDeliveryRow.event_id).where(
                WebhookDeliveryRow.event_id.in_(event_ids),
                WebhookDeliveryRow.webhook_id.in_(webhook_ids),
            )
        )
        return {(hook, event) for hook, event in result.all()}

    def _add_pending(
        self,
        webhook_ids: list[str],
        *,
        event_id: str,
        event_seq: int,
        event_type: str,
        body: str,
    ) -> list[WebhookDeliveryRow]:
        now = utcnow()
        rows = [
            WebhookDeliveryRow(
                id=new_id(),
                workspace_id=self.workspace_id,
                webhook_id=webhook_id,
                event_id=event_id,
                event_seq=event_seq,
                event_type=event_type,
                body=body,
                state=PENDING,
                attempt_count=0,
                last_status_code=0,
                last_error="",
                next_attempt_time=now,
                attempts=[],
                create_time=now,
                update_time=now,
            )
            for webhook_id in webhook_ids
        ]
        self._session.add_all(rows)
        return rows

    async def add_pending(
        self, webhook_ids: list[str], *, event_id: str, event_seq: int, event_type: str, body: str
    ) -> list[WebhookDeliveryRow]:
        """PENDING deliveries for these webhooks, which the caller knows have none.

        None when the event is no longer in the outbox: an erasure (or retention)
        removed it, and what was erased is not sent. The event is looked for after
        the rows are written, in the same transaction: on SQLite that write holds
        the database, on PostgreSQL the event row is locked (``FOR SHARE``), so an
        erasure either commits first (and nothing is recorded) or after this
        commit (and deletes these deliveries with the event)."""
        rows = self._add_pending(
            webhook_ids, event_id=event_id, event_seq=event_seq, event_type=event_type, body=body
        )
        await self._session.flush()
        if not rows:
            return rows
        stored = await self._session.execute(
            select(OutboxEventRow.id)
            .where(OutboxEventRow.id == event_id)
            .with_for_update(read=True)
        )
        if stored.scalar_one_or_none() is None:
            await self._session.execute(
                delete(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id.in_([r.id for r in rows]))
                .execution_options(synchronize_session=False)
            )
            for row in rows:
                self._session.expunge(row)
            return []
        return rows

    async def get_delivery(self, delivery_id: str) -> WebhookDeliveryRow | None:
        result = await self._session.execute(
            select(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id)
        )
        return result.scalar_one_or_none()

    async def list_deliveries(
        self, webhook_id: str, *, state: str | None, limit: int, before_id: str | None
    ) -> list[WebhookDeliveryRow]:
        query = (
            select(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.webhook_id == webhook_id)
            .order_by(WebhookDeliveryRow.id.desc())
            .limit(limit)
        )
        if state is not None:
            query = query.where(WebhookDeliveryRow.state == state)
        if before_id is not None:
            query = query.where(WebhookDeliveryRow.id < before_id)
        return list((await self._session.execute(query)).scalars())

    async def claim(self, delivery_id: str, now: datetime, lease: timedelta) -> bool:
        """Take the delivery for one attempt if it is due and nobody holds it."""
        result = await self._session.execute(
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.id == delivery_id,
                WebhookDeliveryRow.state == PENDING,
                WebhookDeliveryRow.next_attempt_time <= now,
                or_(
                    WebhookDeliveryRow.lease_until.is_(None),
                    WebhookDeliveryRow.lease_until < now,
                ),
            )
            .values(lease_until=now + lease)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, delivery_id: str) -> None:
        await self._session.execute(
            update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id == delivery_id)
            .values(lease_until=None)
            .execution_options(synchronize_session=False)
        )

    async def record_attempt(
        self,
        row: WebhookDeliveryRow,
        attempt: dict[str, Any],
        *,
        state: str,
        next_attempt_time: datetime | None,
    ) -> WebhookDeliveryRow:
        row.attempts = [*row.attempts, attempt]
        row.attempt_count = attempt["attempt"]
        row.last_status_code = attempt["status_code"]
        row.last_error = attempt["error"]
        row.state = state
        row.next_attempt_time = next_attempt_time
        row.lease_until = None
        row.update_time = utcnow()
        await self._session.flush()
        return row


async def due_deliveries(session: AsyncSession, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(workspace id, delivery id) of due, unheld deliveries of enabled webhooks."""
    if not session.info.get(UNSCOPED_KEY):
        raise RuntimeError("finding due deliveries needs an unscoped session")
    result = await session.execute(
        select(WebhookDeliveryRow.workspace_id, WebhookDeliveryRow.id)
        .join(WebhookRow, WebhookRow.id == WebhookDeliveryRow.webhook_id)
        .where(
            WebhookDeliveryRow.state == PENDING,
            WebhookDeliveryRow.next_attempt_time <= now,
            or_(WebhookDeliveryRow.lease_until.is_(None), WebhookDeliveryRow.lease_until < now),
            WebhookRow.enabled.is_(True),
        )
        .order_by(WebhookDeliveryRow.next_attempt_time)
        .limit(limit)
    )
    return [(str(w), str(d)) for w, d in result.all()]


async def lagging_webhooks(session: AsyncSession, limit: int) -> list[WebhookRow]:
    """Enabled webhooks whose workspace has events they have not been matched
    against yet (the catch-up's work list)."""
    if not session.info.get(UNSCOPED_KEY):
        raise RuntimeError("finding lagging webhooks needs an unscoped session")
    result = await session.execute(
        select(WebhookRow)
        .join(WorkspaceRow, WorkspaceRow.id == WebhookRow.workspace_id)
        .where(WebhookRow.enabled.is_(True), WebhookRow.event_seq < WorkspaceRow.event_seq)
        .order_by(WebhookRow.workspace_id, WebhookRow.id)
        .limit(limit)
    )
    return list(result.scalars())


FINISHED = (SUCCEEDED, FAILED, DEAD_LETTER)


async def prune_deliveries(
    session: AsyncSession, cutoff: datetime, limit: int, *, finished_only: bool
) -> int:
    """Delete up to ``limit`` of the workspace's deliveries created before ``cutoff``
    (only those that are over, with ``finished_only``); how many went."""
    query = select(WebhookDeliveryRow.id).where(WebhookDeliveryRow.create_time < cutoff)
    if finished_only:
        query = query.where(WebhookDeliveryRow.state.in_(FINISHED))
    ids = list((await session.execute(query.limit(limit))).scalars())
    if ids:
        await session.execute(
            delete(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id.in_(ids))
            .execution_options(synchronize_session=False)
        )
    return len(ids)


async def workspaces_with_deliveries_before(
    session: AsyncSession, cutoff: datetime, limit: int
) -> list[str]:
    """Workspaces that have finished deliveries created before ``cutoff``."""
    if not session.info.get(UNSCOPED_KEY):
        raise RuntimeError("finding old deliveries needs an unscoped session")
    result = await session.execute(
        select(WebhookDeliveryRow.workspace_id)
        .where(
            WebhookDeliveryRow.create_time < cutoff,
            WebhookDeliveryRow.state.in_(FINISHED),
        )
        .distinct()
        .limit(limit)
    )
    return [str(w) for w in result.scalars()]


def subscribes(hook: WebhookRow, event_type: str) -> bool:
    """Whether the webhook wants events of ``event_type`` (no types: every event)."""
    return not hook.event_types or event_type in hook.event_types
