"""Builds the providers, breakers and router from the server's settings."""

from __future__ import annotations

import logging
from typing import Any

from fenlo_server.config import Settings
from fenlo_server.llm.breaker import BreakerPolicy, Breakers, LocalBreakers, RedisBreakers
from fenlo_server.llm.offline import OfflineProvider
from fenlo_server.llm.openai_compat import groq_provider, openai_provider
from fenlo_server.llm.router import LlmRouter, ProviderChoice
from fenlo_server.llm.types import Provider

log = logging.getLogger("fenlo.llm")
KNOWN = ("groq", "openai", "offline")


def build_providers(settings: Settings) -> dict[str, Provider]:
    """Every provider the settings enable (offline always)."""
    sdk_timeout = settings.llm_request_timeout_seconds
    providers: dict[str, Provider] = {
        "offline": OfflineProvider(settings.offline_tokens_per_second)
    }
    if settings.groq_api_key is not None:
        providers["groq"] = groq_provider(
            api_key=settings.groq_api_key.get_secret_value(),
            base_url=settings.groq_base_url,
            model=settings.groq_model,
            timeout=sdk_timeout,
        )
    if settings.openai_api_key is not None:
        providers["openai"] = openai_provider(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            timeout=sdk_timeout,
            request_usage=settings.openai_stream_usage,
        )
    return providers


def parse_order(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown LLM provider(s) {unknown}; use {', '.join(KNOWN)}")
    return names


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        failure_rate=settings.breaker_failure_rate,
        minimum_calls=settings.breaker_minimum_calls,
        window_seconds=settings.breaker_window_seconds,
        cooldown_seconds=settings.breaker_cooldown_seconds,
        half_open_probes=settings.breaker_half_open_probes,
    )


def build_router(
    settings: Settings,
    *,
    redis: Any = None,
    providers: dict[str, Provider] | None = None,
) -> LlmRouter:
    """The router with the settings' providers; breakers shared through ``redis`` if given."""
    providers = providers if providers is not None else build_providers(settings)
    policy = breaker_policy(settings)
    breakers: Breakers = (
        RedisBreakers(redis, policy) if redis is not None else LocalBreakers(policy)
    )
    order = [ProviderChoice(n) for n in parse_order(settings.llm_order) if n in providers]
    log.debug(
        "llm providers",
        extra={"order": [c.provider for c in order], "shared_breakers": redis is not None},
    )
    return LlmRouter(
        providers,
        order,
        breakers,
        first_token_timeout=settings.llm_first_token_timeout_seconds,
        stall_timeout=settings.llm_stall_timeout_seconds,
        last_resort="offline" if settings.llm_offline_fallback else None,
    )
