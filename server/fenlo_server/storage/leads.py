"""One workspace's leads (rows written by the chat pipeline's persistence step)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.storage.models import ConversationRow, LeadRow
from fenlo_server.storage.repositories import workspace_of

LeadOrder = Literal["score", "update_time", "create_time"]


@dataclass(frozen=True, slots=True)
class LeadFilter:
    """Filters of ListLeads; empty or None means any."""

    statuses: tuple[str, ...] = ()
    min_score: float = 0.0
    conversation_id: str | None = None
    contact_email: str | None = None


@dataclass(frozen=True, slots=True)
class LeadView:
    """A lead with its conversation's external contact id."""

    row: LeadRow
    external_contact_id: str


def _sort_column(order: LeadOrder) -> Any:
    if order == "score":
        return LeadRow.score
    if order == "update_time":
        return LeadRow.update_time
    return LeadRow.create_time


class LeadRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.workspace_id = workspace_of(session)

    async def get(self, lead_id: str) -> LeadView | None:
        query = (
            select(LeadRow, ConversationRow.external_contact_id)
            .join(ConversationRow, ConversationRow.id == LeadRow.conversation_id)
            .where(LeadRow.id == lead_id)
        )
        found = (await self._session.execute(query)).first()
        return LeadView(found[0], found[1]) if found else None

    async def list_page(
        self,
        *,
        filters: LeadFilter,
        order: LeadOrder,
        limit: int,
        after: tuple[float | datetime, str] | None,
    ) -> list[LeadView]:
        """Leads in ``order`` (descending, ties by id descending), after the
        (sort value, id) of the previous page's last lead."""
        column = _sort_column(order)
        query = (
            select(LeadRow, ConversationRow.external_contact_id)
            .join(ConversationRow, ConversationRow.id == LeadRow.conversation_id)
            .order_by(column.desc(), LeadRow.id.desc())
            .limit(limit)
        )
        conditions: list[ColumnElement[bool]] = []
        if filters.statuses:
            conditions.append(LeadRow.status.in_(filters.statuses))
        if filters.min_score > 0:
            conditions.append(LeadRow.score >= filters.min_score)
        if filters.conversation_id is not None:
            conditions.append(LeadRow.conversation_id == filters.conversation_id)
        if filters.contact_email is not None:
            email = func.lower(LeadRow.contact["email"].as_string())
            conditions.append(email == filters.contact_email.lower())
        if after is not None:
            value, lead_id = after
            conditions.append(or_(column < value, and_(column == value, LeadRow.id < lead_id)))
        if conditions:
            query = query.where(*conditions)
        rows = (await self._session.execute(query)).all()
        return [LeadView(row, contact) for row, contact in rows]

    async def save(self, row: LeadRow) -> LeadRow:
        await self._session.flush()
        return row
