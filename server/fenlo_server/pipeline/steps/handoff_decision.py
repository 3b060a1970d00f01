"""handoff_decision: hands the conversation to a human when the user asks for
one, escalates, stays negative, keeps getting poor answers, or (if the
workspace wants it) trips the guard. The conversation becomes HANDED_OFF and
the turn carries a ``handoff`` with the reason and a summary for the agent.

Parameters: those of :class:`~fenlo_server.pipeline.analysis.handoff.HandoffPolicy`
(``negative_streak``, ``low_quality_threshold``, ``low_quality_streak``,
``on_guard_block``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.events import types as events
from fenlo_server.pipeline.analysis.handoff import HandoffPolicy, decide_handoff
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.step import Skip

NAME = "handoff_decision"


class HandoffDecisionStep:
    name = NAME
    phase = "post"
    essential = False

    def __init__(self, policy: HandoffPolicy) -> None:
        self.policy = policy

    async def run(self, ctx: MessageContext) -> None:
        if ctx.handed_off:
            raise Skip("already handed off")
        sentiments = list(ctx.memory.sentiments)
        if ctx.sentiment is not None:
            sentiments.append(ctx.sentiment.score)
        qualities = list(ctx.memory.qualities)
        if ctx.quality is not None and ctx.passages:  # see persistence: grounded answers only
            qualities.append(ctx.quality.score)
        history = [(m.role, m.content) for m in ctx.memory.history[-6:]]
        history.append(("user", ctx.text))
        decision = decide_handoff(
            ctx.text,
            intent=ctx.intent,
            sentiments=sentiments,
            qualities=qualities,
            guard_blocked=bool(ctx.guard and ctx.guard.blocked),
            history=history,
            contact={**ctx.memory.lead.contact, **ctx.contact},
            policy=self.policy,
        )
        if decision is None:
            return
        ctx.handoff = decision
        ctx.events.append(
            events.Event(
                events.HANDOFF_REQUESTED,
                {
                    "conversation": (
                        f"workspaces/{ctx.workspace_id}/conversations/{ctx.conversation_id}"
                    ),
                    "reason": decision.reason,
                    "summary": decision.summary,
                },
            )
        )


def create(params: Mapping[str, Any]) -> HandoffDecisionStep:
    return HandoffDecisionStep(HandoffPolicy.from_params(params))
