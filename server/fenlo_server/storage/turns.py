"""Reads and writes of a chat turn: the conversation's memory on the first turn,
and everything a completed turn stores, in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.events.types import Event
from fenlo_server.ids import new_id
from fenlo_server.storage.models import ConversationRow, LeadRow, MessageRow, TurnRow, utcnow
from fenlo_server.storage.outbox import append_events
from fenlo_server.storage.repositories import (
    ConversationRepository,
    conversation_gone,
    workspace_of,
)

RECENT = 10  # per-turn sentiment and quality scores kept on the conversation


@dataclass(frozen=True, slots=True)
class LoadedConversation:
    state: str
    messages: list[tuple[str, str]]  # (role, text), oldest first: user / assistant
    sentiments: list[float]
    qualities: list[float]
    last_sentiment: str
    lead_score: float = 0.0
    lead_turns: int = 0
    lead_signals: list[dict[str, Any]] = field(default_factory=list)
    lead_contact: dict[str, str] = field(default_factory=dict)
    lead_id: str = ""


_ROLES = {"USER": "user", "ASSISTANT": "assistant", "AGENT": "assistant"}


async def load_conversation(
    session: AsyncSession, conversation_id: str, limit: int
) -> LoadedConversation | None:
    conversation = (
        await session.execute(select(ConversationRow).where(ConversationRow.id == conversation_id))
    ).scalar_one_or_none()
    if conversation is None:
        return None
    rows = list(
        (
            await session.execute(
                select(MessageRow.role, MessageRow.text)
                .where(MessageRow.conversation_id == conversation_id)
                .order_by(MessageRow.seq.desc())
                .limit(limit)
            )
        ).all()
    )
    lead = (
        await session.execute(select(LeadRow).where(LeadRow.conversation_id == conversation_id))
    ).scalar_one_or_none()
    analysis = conversation.analysis or {}
    return LoadedConversation(
        state=conversation.state,
        messages=[(_ROLES[r], t) for r, t in reversed(rows) if r in _ROLES and t],
        sentiments=[float(x) for x in analysis.get("recentSentiments", [])],
        qualities=[float(x) for x in analysis.get("recentQualities", [])],
        last_sentiment=str((analysis.get("sentiment") or {}).get("label", "")),
        lead_score=lead.score if lead else 0.0,
        lead_turns=lead.turns if lead else 0,
        lead_signals=list(lead.signals) if lead else [],
        lead_contact=dict(lead.contact) if lead else {},
        lead_id=lead.id if lead else "",
    )


@dataclass(frozen=True, slots=True)
class TurnStats:
    """A turn's flat figures for analytics (the ``turns`` table)."""

    intent: str = ""
    sentiment: str = ""
    quality: float | None = None
    grounded: bool = False
    ttft_ms: float | None = None
    providers: tuple[str, ...] = ()
    failovers: int = 0
    handoff_reason: str = ""
    guard_blocked: bool = False
    interrupted: bool = False


@dataclass(slots=True)
class TurnRecord:
    """What a completed turn stores (built by the persistence step)."""

    conversation_id: str
    turn_id: str
    user_message_id: str
    answer: str | None  # None: no assistant message (silent while handed off)
    interrupted: bool
    citations: list[dict[str, Any]]
    turn_analysis: dict[str, Any]  # TurnAnalysis JSON, stored on the user message
    conversation_analysis: dict[str, Any]  # ConversationAnalysis JSON (+ recent lists)
    new_state: str | None  # HANDED_OFF after a handoff
    lead: dict[str, Any] | None  # score, turns, signals, contact
    events: list[Event]
    stored_user_text: str | None = None  # when the stored text must change (masking)
    stats: TurnStats | None = None
    lead_id: str = ""  # the conversation's lead, when the caller knows it is stored
    # Events that name the answer's id, made once it is known (after ``events``).
    closing: Callable[[str], list[Event]] | None = None


@dataclass(frozen=True, slots=True)
class StoredTurn:
    assistant_id: str  # "" when there is no answer
    lead_id: str  # "" when the turn has no lead


async def store_turn(session: AsyncSession, record: TurnRecord) -> StoredTurn:
    """Write the turn, its lead and its events (one outbox write)."""
    workspace_id = workspace_of(session)
    repo = ConversationRepository(session)
    assistant_id = ""
    conversation_values: dict[str, Any] = {"analysis": record.conversation_analysis}
    if record.new_state:
        conversation_values["state"] = record.new_state
    if record.answer is not None:
        # The conversation's analysis and state go with the answer's counters, in
        # one statement; a conversation deleted or erased while the turn ran raises.
        assistant = await repo.append_message(
            record.conversation_id,
            role="ASSISTANT",
            text=record.answer,
            turn_id=record.turn_id,
            interrupted=record.interrupted,
            citations=record.citations,
            conversation_values=conversation_values,
        )
        assistant_id = assistant.id
    else:
        result = await session.execute(
            update(ConversationRow)
            .where(ConversationRow.id == record.conversation_id)
            .values(update_time=utcnow(), **conversation_values)
            .execution_options(synchronize_session=False)
        )
        if not getattr(result, "rowcount", 0):
            # Deleted or erased while the turn ran: store nothing of it (no lead, no events).
            raise conversation_gone(workspace_id, record.conversation_id)
    values: dict[str, Any] = {"analysis": record.turn_analysis}
    if record.stored_user_text is not None:
        values["text"] = record.stored_user_text
    await session.execute(
        update(MessageRow)
        .where(MessageRow.id == record.user_message_id)
        .values(**values)
        .execution_options(synchronize_session=False)  # the message is not loaded here
    )
    lead_id = ""
    if record.lead is not None:
        lead_id = await _store_lead(session, workspace_id, record)
    if record.stats is not None:
        stats = record.stats
        session.add(
            TurnRow(
                id=new_id(),
                workspace_id=workspace_id,
                conversation_id=record.conversation_id,
                turn_id=record.turn_id,
                intent=stats.intent,
                sentiment=stats.sentiment,
                quality=stats.quality,
                grounded=stats.grounded,
                ttft_ms=stats.ttft_ms,
                providers=list(stats.providers),
                failovers=stats.failovers,
                handoff_reason=stats.handoff_reason,
                guard_blocked=stats.guard_blocked,
                interrupted=stats.interrupted,
                create_time=utcnow(),
            )
        )
        await session.flush()
    closing = record.closing(assistant_id) if record.closing is not None else []
    await append_events(session, [*record.events, *closing])
    return StoredTurn(assistant_id, lead_id)


async def _store_lead(session: AsyncSession, workspace_id: str, record: TurnRecord) -> str:
    """Update (or create) the conversation's lead; return its id."""
    assert record.lead is not None
    now = utcnow()
    values: dict[str, Any] = {
        "score": float(record.lead["score"]),
        "turns": int(record.lead["turns"]),
        "signals": list(record.lead["signals"]),
        "contact": dict(record.lead["contact"]),
        "update_time": now,
    }
    if record.lead.get("qualified"):
        values["qualified_time"] = func.coalesce(LeadRow.qualified_time, now)
    if record.lead_id:
        # Known to exist: one statement, no read (gone meanwhile: made again below).
        result = await session.execute(
            update(LeadRow)
            .where(LeadRow.id == record.lead_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0):
            return record.lead_id
    lead = (
        await session.execute(
            select(LeadRow).where(LeadRow.conversation_id == record.conversation_id)
        )
    ).scalar_one_or_none()
    if lead is None:
        lead = LeadRow(
            id=new_id(),
            workspace_id=workspace_id,
            conversation_id=record.conversation_id,
            status="NEW",
            create_time=now,
        )
        session.add(lead)
    lead.score = values["score"]
    lead.turns = values["turns"]
    lead.signals = values["signals"]
    lead.contact = values["contact"]
    if record.lead.get("qualified") and lead.qualified_time is None:
        lead.qualified_time = now
    lead.update_time = now
    await session.flush()
    return str(lead.id)


async def trim_answer(session: AsyncSession, message_id: str, delivered: int) -> str | None:
    """Cut a stored answer at ``delivered`` code points (a late interrupt); return it."""
    row = (
        await session.execute(select(MessageRow).where(MessageRow.id == message_id))
    ).scalar_one_or_none()
    if row is None:
        return None
    if delivered < len(row.text):
        row.text = row.text[:delivered]
        row.interrupted = True
        await session.flush()
    return row.text
