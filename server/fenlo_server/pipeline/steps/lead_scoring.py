"""lead_scoring: buying signals of the turn, added to the conversation's
cumulative lead score (with decay), with events when it changes and when it
crosses the workspace's threshold.

Parameters: ``threshold`` (70), ``decay`` (0.9) and the weights of
:class:`~fenlo_server.pipeline.analysis.lead.LeadPolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.events import types as events
from fenlo_server.pipeline.analysis.lead import LeadPolicy, score_lead
from fenlo_server.pipeline.context import MessageContext

NAME = "lead_scoring"


class LeadScoring:
    name = NAME
    phase = "post"
    essential = False

    def __init__(self, policy: LeadPolicy) -> None:
        self.policy = policy

    async def run(self, ctx: MessageContext) -> None:
        update = score_lead(
            ctx.text,
            ctx.memory.lead,
            entities=ctx.entities,
            intent=ctx.intent,
            sentiment=ctx.sentiment,
            contact=ctx.contact,
            policy=self.policy,
        )
        ctx.lead = update
        conversation = f"workspaces/{ctx.workspace_id}/conversations/{ctx.conversation_id}"
        if update.change:
            ctx.events.append(
                events.Event(
                    events.LEAD_SCORE_CHANGED,
                    {
                        "conversation": conversation,
                        "score": round(update.state.score, 2),
                        "change": round(update.change, 2),
                    },
                )
            )
        if update.crossed_threshold:
            ctx.events.append(
                events.Event(
                    events.LEAD_QUALIFIED,
                    {
                        "conversation": conversation,
                        "score": round(update.state.score, 2),
                        "threshold": self.policy.threshold,
                    },
                )
            )


def create(params: Mapping[str, Any]) -> LeadScoring:
    return LeadScoring(LeadPolicy.from_params(params))
