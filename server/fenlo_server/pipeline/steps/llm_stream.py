"""llm_stream: the answer, streamed from the LLM router (the workspace's providers,
the offline provider by default), grounded in the retrieved passages.

The workspace's tokens-per-day quota is checked before the call and charged
with what the call used. The LLM sees the PII-masked message and history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from fenlo_server.errors import quota_exceeded
from fenlo_server.llm.prompt import cited_markers, grounded_messages
from fenlo_server.llm.router import ProviderChoice, RouteResult
from fenlo_server.llm.types import LlmRequest
from fenlo_server.pipeline.context import MessageContext

NAME = "llm_stream"
_PROVIDERS = {
    "LLM_PROVIDER_GROQ": "groq",
    "LLM_PROVIDER_OPENAI": "openai",
    "LLM_PROVIDER_OFFLINE": "offline",
}
MINUTES_A_DAY = 24 * 60


def provider_choices(settings: Mapping[str, Any]) -> list[ProviderChoice]:
    """The workspace's LLM order from its stored settings (empty: the server's)."""
    choices = []
    for entry in (settings.get("llm") or {}).get("providers", []):
        name = _PROVIDERS.get(entry.get("provider", ""))
        if name:
            choices.append(ProviderChoice(name, entry.get("model") or None))
    return choices


class LlmStream:
    name = NAME
    phase = "generate"
    essential = True

    async def run(self, ctx: MessageContext) -> None:
        async for _ in self.stream(ctx):
            pass

    async def stream(self, ctx: MessageContext) -> AsyncIterator[str]:
        services = ctx.services
        info = await services.directory.get(ctx.workspace_id)
        budget = info.quotas.tokens_per_day if info is not None else 0
        key = f"tokens:{ctx.workspace_id}"
        if budget:
            decision = await services.limiter.take(key, budget / MINUTES_A_DAY, 1, capacity=budget)
            if not decision.allowed:
                raise quota_exceeded(
                    ctx.workspace_id,
                    "tokens_per_day",
                    f"its {budget} LLM tokens for the day",
                    decision.retry_after,
                )
        llm = ctx.settings.get("llm") or {}
        request = LlmRequest(
            grounded_messages(
                str(ctx.settings.get("system_prompt", "")), ctx.passages, ctx.history, ctx.llm_text
            ),
            passages=tuple(ctx.passages),
            temperature=llm.get("temperature"),
            max_tokens=int(llm.get("max_output_tokens") or 0) or None,
        )
        result = RouteResult()
        produced: list[str] = []
        try:
            async for text in services.llm.stream(request, provider_choices(ctx.settings), result):
                produced.append(text)
                yield text
        finally:
            ctx.providers.extend(result.providers)
            ctx.failovers += result.failovers
            ctx.usage.add(result.usage)
            ctx.cited = result.cited or cited_markers("".join(produced), ctx.passages)
            used = result.usage.prompt_tokens + result.usage.completion_tokens
            if budget and used > 1:
                await services.limiter.take(
                    key, budget / MINUTES_A_DAY, used - 1, capacity=budget, force=True
                )


def create(params: Mapping[str, Any]) -> LlmStream:
    if params:
        raise ValueError("llm_stream takes no parameters (providers are in settings.llm)")
    return LlmStream()
