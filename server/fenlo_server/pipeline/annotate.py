"""A turn's analysis as the contract's messages (for the stream and for storage)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from google.protobuf import json_format

from fenlo.v1 import analysis_pb2, conversation_pb2
from fenlo_server.pipeline.context import MessageContext

A = analysis_pb2
_SENTIMENT = {
    "positive": A.SENTIMENT_LABEL_POSITIVE,
    "neutral": A.SENTIMENT_LABEL_NEUTRAL,
    "negative": A.SENTIMENT_LABEL_NEGATIVE,
}
_GUARD = {
    "injection": A.GUARD_CATEGORY_INJECTION,
    "jailbreak": A.GUARD_CATEGORY_JAILBREAK,
    "content": A.GUARD_CATEGORY_CONTENT,
    "exfiltration": A.GUARD_CATEGORY_EXFILTRATION,
    "turn_limit": A.GUARD_CATEGORY_TURN_LIMIT,
}


def guard_analysis(ctx: MessageContext) -> analysis_pb2.TurnAnalysis:
    analysis = A.TurnAnalysis()
    if ctx.guard is not None:
        analysis.guard.CopyFrom(
            A.GuardVerdict(
                outcome=A.GUARD_OUTCOME_BLOCKED if ctx.guard.blocked else A.GUARD_OUTCOME_ALLOWED,
                category=_GUARD.get(ctx.guard.category or "", A.GUARD_CATEGORY_UNSPECIFIED),
                score=ctx.guard.score,
                reasons=list(ctx.guard.reasons),
            )
        )
    return analysis


def post_analysis(ctx: MessageContext) -> analysis_pb2.TurnAnalysis:
    """Sentiment, intent, entities, quality and lead score (no guard verdict)."""
    analysis = A.TurnAnalysis()
    if ctx.sentiment is not None:
        analysis.sentiment.CopyFrom(
            sentiment(ctx.sentiment.label, ctx.sentiment.score, ctx.sentiment.reasons)
        )
    if ctx.intent is not None:
        analysis.intent.CopyFrom(
            A.Intent(
                kind=A.IntentKind.Value(f"INTENT_KIND_{ctx.intent.kind.upper()}"),
                confidence=ctx.intent.confidence,
                reasons=list(ctx.intent.reasons),
            )
        )
    analysis.entities.extend(
        A.Entity(
            kind=A.EntityKind.Value(f"ENTITY_KIND_{e.kind.upper()}"),
            text=e.text,
            value=e.value,
            start=e.start,
            end=e.end,
        )
        for e in ctx.entities
    )
    if ctx.quality is not None:
        analysis.quality.CopyFrom(
            A.Quality(
                score=ctx.quality.score,
                components=[
                    A.QualityComponent(name=c.name, score=c.score, weight=c.weight)
                    for c in ctx.quality.components
                ],
                reasons=list(ctx.quality.reasons),
            )
        )
    if ctx.lead is not None:
        analysis.lead_score.CopyFrom(
            A.LeadScore(
                score=ctx.lead.state.score,
                change=ctx.lead.change,
                signals=[
                    A.LeadSignal(kind=s.kind, points=s.points, evidence=s.evidence)
                    for s in ctx.lead.signals
                ],
            )
        )
    return analysis


def sentiment(label: str, score: float, reasons: tuple[str, ...] = ()) -> analysis_pb2.Sentiment:
    return A.Sentiment(label=_SENTIMENT[label], score=score, reasons=list(reasons))


def full_analysis(ctx: MessageContext) -> analysis_pb2.TurnAnalysis:
    analysis = post_analysis(ctx)
    analysis.MergeFrom(guard_analysis(ctx))
    return analysis


def to_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def citations(ctx: MessageContext) -> list[conversation_pb2.Citation]:
    """The passages the answer cited, as Citation messages."""
    out = []
    for marker in ctx.cited:
        if 1 <= marker <= len(ctx.hits):
            hit = ctx.hits[marker - 1]
            out.append(
                conversation_pb2.Citation(
                    index=marker,
                    document=f"workspaces/{ctx.workspace_id}/documents/{hit.chunk.document_id}",
                    title=hit.chunk.title,
                    source_uri=hit.chunk.source_uri,
                    heading_path=list(hit.chunk.heading_path),
                    passage=hit.chunk.text,
                    score=round(hit.score, 6),
                )
            )
    return out


def lead_json(ctx: MessageContext) -> dict[str, Any] | None:
    if ctx.lead is None:
        return None
    state = ctx.lead.state
    return {
        "score": state.score,
        "turns": state.turns,
        "signals": [asdict(s) for s in state.signals],
        "contact": dict(state.contact),
        "qualified": ctx.lead.crossed_threshold,
    }
