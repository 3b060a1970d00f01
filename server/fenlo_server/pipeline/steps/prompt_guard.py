"""prompt_guard: refuses injection, jailbreak and exfiltration attempts, content
the workspace does not allow, and conversations that send turns too fast.

A blocked turn gets a short, polite refusal in the workspace's language and an
annotation; it never reaches the LLM (generation ends here), while the analysis
and persistence steps still run.

Two layers: the rules (:mod:`~fenlo_server.pipeline.analysis.guard`, every
message) and the semantic layer (:mod:`~fenlo_server.pipeline.analysis.guard_semantic`,
a classifier on the message's multilingual embedding). The semantic layer's
vector is kept on the turn, so retrieval and the intent classifier reuse it.

Parameters: ``blocked_topics`` (list of words or phrases), ``block_profanity``
(false), ``block_violence`` (true), ``conversation_turns_per_minute`` (20),
``semantic`` ("auto": on when the workspace's pipeline retrieves, whose query
embedding it shares; true: always, one embedding before the first token
without retrieval; false: rules only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fenlo_server.pipeline.analysis import guard_semantic
from fenlo_server.pipeline.analysis.guard import GuardPolicy, check, safe_reply
from fenlo_server.pipeline.analysis.types import GuardResult
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.registry import DEFAULT_PIPELINE
from fenlo_server.pipeline.steps.params import get, only

NAME = "prompt_guard"
RETRIEVAL = "rag_retrieval"
log = logging.getLogger(__name__)


def retrieves(settings: Mapping[str, Any]) -> bool:
    """Whether the workspace's pipeline has the retrieval step."""
    pipeline = settings.get("pipeline") or [{"name": name} for name in DEFAULT_PIPELINE]
    return any(isinstance(e, Mapping) and e.get("name") == RETRIEVAL for e in pipeline)


class PromptGuard:
    name = NAME
    phase = "pre"
    essential = True  # if the guard cannot run, the message does not reach the LLM

    def __init__(self, policy: GuardPolicy, turns_per_minute: int, semantic: str = "auto") -> None:
        self.policy = policy
        self.turns_per_minute = turns_per_minute
        self.semantic = semantic

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
        if not ctx.guard.blocked and self._semantic_on(ctx):
            ctx.guard = await self._semantic(ctx) or ctx.guard
        if ctx.guard.blocked:
            ctx.reply = safe_reply(ctx.guard.category or "injection", ctx.language)
            ctx.reply_source = "guard"

    def _semantic_on(self, ctx: MessageContext) -> bool:
        if self.semantic == "auto":
            return retrieves(ctx.settings)
        return self.semantic == "true"

    async def _semantic(self, ctx: MessageContext) -> GuardResult | None:
        """The semantic layer's verdict when it blocks; None when it allows or
        cannot run (no multilingual embedder, or it failed: the rules stand)."""
        embedder = next(
            (e for e in ctx.services.knowledge.embedders if e.model == guard_semantic.MODEL), None
        )
        if embedder is None:
            return None
        try:
            layer = guard_semantic.shared(embedder)
            prepared = layer.prepare(ctx.text)
            vector = await layer.vector(prepared)
            ctx.query_vectors = {guard_semantic.MODEL: vector}
            ctx.vectors_text = prepared
            verdict = await layer.judge(ctx.text, vector)
        except Exception:
            log.warning("the guard's semantic layer failed; rules only", exc_info=True)
            return None
        if not verdict.attack:
            return None
        return GuardResult(
            True,
            verdict.category,
            round(verdict.probability, 3),
            (f"semantic: {verdict.category} (p={verdict.probability:.2f})",),
        )


def create(params: Mapping[str, Any]) -> PromptGuard:
    only(
        params,
        "blocked_topics",
        "block_profanity",
        "block_violence",
        "conversation_turns_per_minute",
        "semantic",
    )
    rate = get(params, "conversation_turns_per_minute", int, 20)
    if rate < 0:
        raise ValueError("conversation_turns_per_minute must not be negative")
    semantic = params.get("semantic", "auto")
    if semantic not in ("auto", True, False):
        raise ValueError('parameter "semantic" must be "auto", true or false')
    own = ("conversation_turns_per_minute", "semantic")
    policy_params = {k: v for k, v in params.items() if k not in own}
    return PromptGuard(GuardPolicy.from_params(policy_params), rate, str(semantic).lower())
