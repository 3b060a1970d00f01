"""persistence: stores the turn after the last token, in one transaction: the
answer (cut where an interrupt cut it) with its citations, the turn's analysis
on the user message, the conversation's running analysis and state, the lead,
and the events, written to the outbox with the same commit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.events import types as events
from fenlo_server.llm.types import ChatMessage
from fenlo_server.pipeline import annotate
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.storage.turns import RECENT, TurnRecord, TurnStats, store_turn

NAME = "persistence"


class Persistence:
    name = NAME
    phase = "post"
    essential = True

    async def run(self, ctx: MessageContext) -> None:
        memory = ctx.memory
        conversation = f"workspaces/{ctx.workspace_id}/conversations/{ctx.conversation_id}"
        answer: str | None = None if ctx.silent else ctx.answer
        if answer == "" and ctx.interrupted:
            answer = None  # nothing reached the user
        sentiments = [*memory.sentiments, *([ctx.sentiment.score] if ctx.sentiment else [])]
        # Only answers grounded in retrieved passages count towards the running
        # quality (and a low-quality handoff): "I have no information on that" with
        # an empty knowledge base is a gap in the knowledge, not a poor answer.
        graded = ctx.quality is not None and bool(ctx.passages)
        qualities = [*memory.qualities, *([ctx.quality.score] if graded and ctx.quality else [])]
        analysis: dict[str, Any] = {
            "recentSentiments": sentiments[-RECENT:],
            "recentQualities": qualities[-RECENT:],
            "average_quality": sum(qualities) / len(qualities) if qualities else 0.0,
            "lead_score": ctx.lead.state.score if ctx.lead else memory.lead.score,
        }
        if ctx.sentiment is not None:
            analysis["sentiment"] = annotate.to_json(
                annotate.sentiment(ctx.sentiment.label, ctx.sentiment.score, ctx.sentiment.reasons)
            )
            analysis["sentiment_trend"] = ctx.sentiment_trend or 0.0
        if ctx.intent is not None:
            analysis["intent"] = annotate.to_json(annotate.post_analysis(ctx).intent)
        record_events = list(ctx.events)  # the user message's own event went with it
        if ctx.sentiment is not None and ctx.sentiment.label != memory.last_sentiment:
            record_events.append(
                events.Event(
                    events.SENTIMENT_CHANGED,
                    {
                        "conversation": conversation,
                        "label": ctx.sentiment.label,
                        "score": round(ctx.sentiment.score, 3),
                    },
                )
            )
        new_state = "HANDED_OFF" if ctx.handoff is not None else None
        if new_state:
            record_events.append(
                events.Event(
                    events.CONVERSATION_STATE_CHANGED,
                    {"conversation": conversation, "state": new_state},
                )
            )

        def closing(assistant_id: str) -> list[events.Event]:
            """The events that name the answer, in the turn's one outbox write."""
            out = []
            if assistant_id:
                out.append(
                    events.Event(
                        events.MESSAGE_CREATED,
                        {"message": f"{conversation}/messages/{assistant_id}", "role": "assistant"},
                    )
                )
            out.append(
                events.Event(
                    events.TURN_COMPLETED,
                    {
                        "conversation": conversation,
                        "turn": ctx.turn_id,
                        "providers": ctx.providers,
                        "interrupted": ctx.interrupted,
                    },
                )
            )
            return out

        record = TurnRecord(
            conversation_id=ctx.conversation_id,
            turn_id=ctx.turn_id,
            user_message_id=ctx.user_message_id,
            answer=answer,
            interrupted=ctx.interrupted,
            citations=[annotate.to_json(c) for c in annotate.citations(ctx)],
            turn_analysis=annotate.to_json(annotate.full_analysis(ctx)),
            conversation_analysis=analysis,
            new_state=new_state,
            lead=annotate.lead_json(ctx),
            events=record_events,
            stats=turn_stats(ctx),
            lead_id=memory.lead_id,
            closing=closing,
        )
        async with ctx.services.db.workspace(ctx.workspace_id) as session:
            stored = await store_turn(session, record)
        ctx.assistant_message_id = stored.assistant_id
        if stored.lead_id:
            memory.lead_id = stored.lead_id
        # What later turns of this stream see.
        memory.history.append(ChatMessage("user", ctx.text))
        if answer:
            memory.history.append(ChatMessage("assistant", answer))
        memory.sentiments = sentiments[-RECENT:]
        memory.qualities = qualities[-RECENT:]
        if ctx.sentiment is not None:
            memory.last_sentiment = ctx.sentiment.label
        if ctx.lead is not None:
            memory.lead = ctx.lead.state
        if new_state:
            memory.state = new_state
        memory.turns += 1


def turn_stats(ctx: MessageContext) -> TurnStats:
    """The turn's flat figures for analytics."""
    ttft = ctx.first_token_seconds
    return TurnStats(
        intent=ctx.intent.kind if ctx.intent else "",
        sentiment=ctx.sentiment.label if ctx.sentiment else "",
        quality=ctx.quality.score if ctx.quality else None,
        grounded=bool(ctx.passages),
        ttft_ms=round(ttft * 1000, 3) if ttft is not None else None,
        providers=tuple(ctx.providers),
        failovers=ctx.failovers,
        handoff_reason=ctx.handoff.reason if ctx.handoff else "",
        guard_blocked=bool(ctx.guard and ctx.guard.blocked),
        interrupted=ctx.interrupted,
    )


def create(params: Mapping[str, Any]) -> Persistence:
    if params:
        raise ValueError("persistence takes no parameters")
    return Persistence()
