"""load_context: the conversation's state and a bounded history window.

The first turn of a chat stream reads the conversation (state, recent messages,
lead, recent sentiment and quality) in one transaction; later turns reuse what
the stream remembers. The history given to the LLM is the newest messages that
fit ``history_tokens`` (never the whole conversation).

Parameters: ``history_tokens`` (2000), ``history_messages`` (50, read on the
first turn), ``answer_when_handed_off`` (false: while a human has the
conversation, the assistant stores the user's messages but does not answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.errors import FailedPrecondition, Reason, not_found
from fenlo_server.llm.types import ChatMessage
from fenlo_server.pipeline.analysis.types import LeadSignal, LeadState
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.steps.params import get, only
from fenlo_server.storage.turns import load_conversation

NAME = "load_context"


class LoadContext:
    name = NAME
    phase = "pre"
    essential = True

    def __init__(self, history_tokens: int, history_messages: int, answer_when_handed_off: bool):
        self.history_tokens = history_tokens
        self.history_messages = history_messages
        self.answer_when_handed_off = answer_when_handed_off

    async def run(self, ctx: MessageContext) -> None:
        memory = ctx.memory
        if not memory.loaded:
            async with ctx.services.db.workspace(ctx.workspace_id) as session:
                loaded = await load_conversation(
                    session, ctx.conversation_id, self.history_messages
                )
            if loaded is None:
                raise not_found(
                    "conversation",
                    f"workspaces/{ctx.workspace_id}/conversations/{ctx.conversation_id}",
                )
            memory.state = loaded.state
            memory.history = [
                ChatMessage("assistant" if role == "assistant" else "user", text)
                for role, text in loaded.messages
            ]
            memory.sentiments = list(loaded.sentiments)
            memory.qualities = list(loaded.qualities)
            memory.last_sentiment = loaded.last_sentiment
            memory.lead = LeadState(
                score=loaded.lead_score,
                turns=loaded.lead_turns,
                signals=tuple(LeadSignal(**s) for s in loaded.lead_signals),
                contact=dict(loaded.lead_contact),
            )
            memory.lead_id = loaded.lead_id
            memory.loaded = True
        if memory.state == "CLOSED":
            raise FailedPrecondition(
                Reason.ERROR_REASON_CONVERSATION_CLOSED,
                "the conversation is closed and takes no new turns",
            )
        ctx.language = str(ctx.settings.get("language") or "en")
        ctx.history = window(memory.history, self.history_tokens)
        ctx.handed_off = memory.state == "HANDED_OFF"
        if ctx.handed_off and not self.answer_when_handed_off:
            ctx.silent = True


def window(history: list[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    """The newest messages whose text fits ``budget_tokens`` (about 4 characters a token)."""
    chosen: list[ChatMessage] = []
    used = 0
    for message in reversed(history):
        cost = len(message.content) // 4 + 4
        if used + cost > budget_tokens:
            break
        chosen.append(message)
        used += cost
    chosen.reverse()
    return chosen


def create(params: Mapping[str, Any]) -> LoadContext:
    only(params, "history_tokens", "history_messages", "answer_when_handed_off")
    tokens = get(params, "history_tokens", int, 2000)
    messages = get(params, "history_messages", int, 50)
    if not 0 <= tokens <= 100_000 or not 0 <= messages <= 1000:
        raise ValueError("history_tokens must be 0..100000 and history_messages 0..1000")
    return LoadContext(tokens, messages, get(params, "answer_when_handed_off", bool, False))
