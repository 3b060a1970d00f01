"""prompt_guard: refuses injection, jailbreak and exfiltration attempts, content
the workspace does not allow, and conversations that send turns too fast.

A blocked turn gets a short, polite refusal in the workspace's language and an
annotation; it never reaches the LLM (generation ends here), while the analysis
and persistence steps still run.

Parameters: ``blocked_topics`` (list of words or phrases), ``block_profanity``
(false), ``block_violence`` (true), ``conversation_turns_per_minute`` (20).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.pipeline.analysis.guard import GuardPolicy, check, safe_reply
from fenlo_server.pipeline.analysis.types import GuardResult
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.steps.params import get, only

NAME = "prompt_guard"


class PromptGuard:
    name = NAME
    phase = "pre"
    essential = True  # if the guard cannot run, the message does not reach the LLM

    def __init__(self, policy: GuardPolicy, turns_per_minute: int) -> None:
        self.policy = policy
        self.turns_per_minute = turns_per_minute

    async def run(self, ctx: MessageContext) -> None:
        if self.turns_per_minute > 0:
            decision = await ctx.services.limiter.take(
                f"conversation-turns:{ctx.workspace_id}:{ctx.conversation_id}",
                self.turns_per_minute,
            )
            if not decision.allowed:
                ctx.guard = GuardResult(
                    True, "turn_limit", 1.0, (f"more than {self.turns_per_minute} turns a minute",)
                )
                ctx.reply = safe_reply("turn_limit", ctx.language)
                ctx.reply_source = "guard"
                return
        ctx.guard = check(ctx.text, self.policy)
        if ctx.guard.blocked:
            ctx.reply = safe_reply(ctx.guard.category or "injection", ctx.language)
            ctx.reply_source = "guard"


def create(params: Mapping[str, Any]) -> PromptGuard:
    only(
        params,
        "blocked_topics",
        "block_profanity",
        "block_violence",
        "conversation_turns_per_minute",
    )
    rate = get(params, "conversation_turns_per_minute", int, 20)
    if rate < 0:
        raise ValueError("conversation_turns_per_minute must not be negative")
    policy_params = {k: v for k, v in params.items() if k != "conversation_turns_per_minute"}
    return PromptGuard(GuardPolicy.from_params(policy_params), rate)
