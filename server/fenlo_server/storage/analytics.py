"""One workspace's figures over a time range, computed with SQL aggregates
(the same statements on SQLite and PostgreSQL). Percentiles are computed here
over the latest ``MAX_LATENCY_SAMPLES`` measured turns of the range."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.storage.models import ConversationRow, LeadRow, MessageRow, TurnRow
from fenlo_server.storage.repositories import workspace_of

MAX_LATENCY_SAMPLES = 100_000
OFF_LOOP_SORT = 5_000


@dataclass(frozen=True, slots=True)
class Latency:
    count: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    sample_size: int = 0


@dataclass(slots=True)
class WorkspaceFigures:
    conversations: int = 0
    messages: dict[str, int] = field(default_factory=dict)  # role -> count
    turns: int = 0
    intents: list[tuple[str, int]] = field(default_factory=list)  # most frequent first
    sentiments: list[tuple[str, int]] = field(default_factory=list)
    average_quality: float = 0.0
    graded_answers: int = 0
    handoffs: int = 0
    leads: list[tuple[str, int]] = field(default_factory=list)
    time_to_first_token: Latency = field(default_factory=Latency)
    provider_failovers: int = 0
    turns_with_failover: int = 0


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def _counted(rows: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    return sorted(((str(k), int(n)) for k, n in rows if k), key=lambda kv: (-kv[1], kv[0]))


class AnalyticsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.workspace_id = workspace_of(session)

    async def figures(self, start: datetime, end: datetime) -> WorkspaceFigures:
        """Figures for [start, end)."""
        session = self._session
        out = WorkspaceFigures()
        out.conversations = int(
            (
                await session.execute(
                    select(func.count(ConversationRow.id)).where(
                        ConversationRow.create_time >= start, ConversationRow.create_time < end
                    )
                )
            ).scalar_one()
        )
        messages = await session.execute(
            select(MessageRow.role, func.count(MessageRow.id))
            .where(MessageRow.create_time >= start, MessageRow.create_time < end)
            .group_by(MessageRow.role)
        )
        out.messages = {str(role): int(n) for role, n in messages.all()}

        in_range = (TurnRow.create_time >= start, TurnRow.create_time < end)
        totals = (
            await session.execute(
                select(
                    func.count(TurnRow.id),
                    func.coalesce(func.sum(TurnRow.failovers), 0),
                    func.count(TurnRow.id).filter(TurnRow.failovers > 0),
                    func.count(TurnRow.id).filter(TurnRow.handoff_reason != ""),
                ).where(*in_range)
            )
        ).one()
        out.turns, out.provider_failovers, out.turns_with_failover, out.handoffs = (
            int(v) for v in totals
        )
        intents = await session.execute(
            select(TurnRow.intent, func.count(TurnRow.id))
            .where(*in_range, TurnRow.intent != "")
            .group_by(TurnRow.intent)
        )
        out.intents = _counted([(str(k), int(n)) for k, n in intents.all()])
        sentiments = await session.execute(
            select(TurnRow.sentiment, func.count(TurnRow.id))
            .where(*in_range, TurnRow.sentiment != "")
            .group_by(TurnRow.sentiment)
        )
        out.sentiments = _counted([(str(k), int(n)) for k, n in sentiments.all()])
        quality = (
            await session.execute(
                select(func.avg(TurnRow.quality), func.count(TurnRow.quality)).where(
                    *in_range, TurnRow.grounded.is_(True), TurnRow.quality.is_not(None)
                )
            )
        ).one()
        out.average_quality = float(quality[0] or 0.0)
        out.graded_answers = int(quality[1])
        leads = await session.execute(
            select(LeadRow.status, func.count(LeadRow.id))
            .where(LeadRow.create_time >= start, LeadRow.create_time < end)
            .group_by(LeadRow.status)
        )
        out.leads = _counted([(str(k), int(n)) for k, n in leads.all()])
        out.time_to_first_token = await self._latency(start, end)
        return out

    async def _latency(self, start: datetime, end: datetime) -> Latency:
        measured = (
            TurnRow.create_time >= start,
            TurnRow.create_time < end,
            TurnRow.ttft_ms.is_not(None),
        )
        counted = await self._session.execute(select(func.count(TurnRow.id)).where(*measured))
        count = int(counted.scalar_one())
        if not count:
            return Latency()
        values = (
            await self._session.execute(
                select(TurnRow.ttft_ms)
                .where(*measured)
                .order_by(TurnRow.create_time.desc())
                .limit(MAX_LATENCY_SAMPLES)
            )
        ).scalars()
        measured_ms = [float(v) for v in values if v is not None]
        # Sorting 100,000 values takes some milliseconds: not on the event loop.
        ordered = (
            await asyncio.to_thread(sorted, measured_ms)
            if len(measured_ms) > OFF_LOOP_SORT
            else sorted(measured_ms)
        )
        return Latency(count, percentile(ordered, 0.5), percentile(ordered, 0.95), len(ordered))
