"""Provider errors, split the way the router treats them."""

from __future__ import annotations

from dataclasses import dataclass


class ProviderError(Exception):
    """A provider call that did not produce a complete answer."""

    def __init__(
        self, provider: str, kind: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{provider}: {kind}: {message}")
        self.provider = provider
        self.kind = kind
        self.detail = message
        self.retry_after = retry_after


class ProviderFailure(ProviderError):
    """The provider is unwell (connection, timeout, 429, 5xx, broken stream): it
    counts against its circuit breaker and the router tries the next provider."""


class ProviderRequestError(ProviderError):
    """The provider refused this request (a 4xx other than 408 and 429): another
    provider would refuse it too, so there is no failover and the breaker is spared."""


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    outcome: str  # "ok", a failure kind, "skipped: breaker open", ...
    detail: str = ""


class AllProvidersFailed(Exception):
    """Every provider in the order failed or was unavailable."""

    def __init__(self, attempts: list[Attempt]) -> None:
        tried = "; ".join(f"{a.provider}: {a.outcome}" for a in attempts) or "none configured"
        super().__init__(f"no LLM provider could answer ({tried})")
        self.attempts = attempts
