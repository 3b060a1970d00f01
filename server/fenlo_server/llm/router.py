"""The LLM router: one answer, streamed, from the first provider that can give it.

Providers are tried in the workspace's order (or the server's), each behind
its circuit breaker. A provider that fails before its first text is replaced
without the caller noticing. One that fails mid-answer is replaced by the next
provider, asked to continue from the text already delivered; what it repeats
of that text is trimmed, so the caller sees every word once. A stream that
ends without the provider saying it is finished counts as cut. Each provider
gets ``first_token_timeout`` for its first text and ``stall_timeout`` between
texts. A refused request (4xx) is not retried elsewhere. When no provider can
answer, :class:`AllProvidersFailed` names what each one did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from fenlo_server import metrics
from fenlo_server.llm.breaker import Breakers
from fenlo_server.llm.errors import (
    AllProvidersFailed,
    Attempt,
    ProviderError,
    ProviderFailure,
    ProviderRequestError,
)
from fenlo_server.llm.overlap import OverlapTrimmer
from fenlo_server.llm.types import LlmRequest, Provider, StreamOutcome, Usage

log = logging.getLogger("fenlo.llm")


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """One entry of a failover order: a provider and, optionally, its model."""

    provider: str
    model: str | None = None


@dataclass(slots=True)
class RouteResult:
    """What the router learned while streaming one answer."""

    providers: list[str] = field(default_factory=list)  # those that contributed text, in order
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cited: list[int] = field(default_factory=list)
    failovers: int = 0
    finish_reason: str = ""


class LlmRouter:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        default_order: Sequence[ProviderChoice],
        breakers: Breakers,
        *,
        first_token_timeout: float = 10.0,
        stall_timeout: float = 10.0,
        last_resort: str | None = "offline",
    ) -> None:
        self.providers = dict(providers)
        self.default_order = list(default_order)
        self.breakers = breakers
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self.last_resort = last_resort if last_resort in self.providers else None

    def order(self, choices: Sequence[ProviderChoice] | None) -> list[ProviderChoice]:
        """The providers to try: the given choices that are configured, else the
        default order; the last resort is appended when it is not already there."""
        order = [c for c in choices or () if c.provider in self.providers] or self.default_order
        if self.last_resort and all(c.provider != self.last_resort for c in order):
            order = [*order, ProviderChoice(self.last_resort)]
        return order

    def stream(
        self,
        request: LlmRequest,
        choices: Sequence[ProviderChoice] | None = None,
        result: RouteResult | None = None,
    ) -> AsyncIterator[str]:
        """Stream the answer's text; ``result`` is filled as it goes.

        Closing the iterator (or cancelling its consumer) closes the provider's
        upstream request at once.
        """
        return self._stream(request, self.order(choices), result or RouteResult())

    async def _stream(
        self, request: LlmRequest, order: list[ProviderChoice], result: RouteResult
    ) -> AsyncIterator[str]:
        sent: list[str] = []
        previous: str | None = None
        for choice in order:
            name = choice.provider
            permit = await self.breakers.acquire(name)
            if permit is None:
                result.attempts.append(Attempt(name, "skipped", "circuit breaker open"))
                metrics.LLM_CALLS.labels(name, "breaker_open").inc()
                continue
            if previous is not None:
                result.failovers += 1
                metrics.LLM_FAILOVERS.labels(previous, name, str(bool(sent)).lower()).inc()
            previous = name
            text_so_far = "".join(sent)
            attempt_request = request.continuing(text_so_far) if text_so_far else request
            trimmer = OverlapTrimmer(text_so_far) if text_so_far else None
            outcome = StreamOutcome()
            upstream = self.providers[name].stream(attempt_request, choice.model, outcome)
            mine: list[str] = []  # what this provider added
            started = time.perf_counter()
            recorded = False
            try:
                first = True
                while True:
                    timeout = self.first_token_timeout if first else self.stall_timeout
                    try:
                        async with asyncio.timeout(timeout):
                            text = await anext(upstream)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        kind = "first_token_timeout" if first else "stalled"
                        raise ProviderFailure(name, kind, f"no text for {timeout:g}s") from None
                    if first:
                        first = False
                        metrics.LLM_FIRST_TOKEN_SECONDS.labels(name).observe(
                            time.perf_counter() - started
                        )
                    if trimmer is not None:
                        text = trimmer.feed(text)
                    if text:
                        if not mine:
                            result.providers.append(name)
                        mine.append(text)
                        sent.append(text)
                        yield text
                if not outcome.finished:
                    raise ProviderFailure(name, "truncated", "the stream ended before the answer")
                if trimmer is not None and (rest := trimmer.flush()):
                    if not mine:
                        result.providers.append(name)
                    mine.append(rest)
                    sent.append(rest)
                    yield rest
                await self.breakers.record(permit, ok=True)
                recorded = True
                metrics.LLM_CALLS.labels(name, "ok").inc()
                result.attempts.append(Attempt(name, "ok"))
                result.finish_reason = outcome.finish_reason
                _account(result, outcome, attempt_request, mine)
                return
            except ProviderRequestError as error:
                await self.breakers.release(permit)
                recorded = True
                metrics.LLM_CALLS.labels(name, "request_error").inc()
                result.attempts.append(Attempt(name, error.kind, error.detail))
                raise
            except ProviderError as error:
                await self.breakers.record(permit, ok=False, retry_after=error.retry_after)
                recorded = True
                metrics.LLM_CALLS.labels(name, error.kind).inc()
                result.attempts.append(Attempt(name, error.kind, error.detail))
                _account(result, outcome, attempt_request, mine)
                log.warning(
                    "llm provider failed",
                    extra={
                        "provider": name,
                        "kind": error.kind,
                        "detail": error.detail[:300],
                        "chars_sent": sum(len(t) for t in sent),
                    },
                )
            finally:
                await upstream.aclose()  # type: ignore[attr-defined]
                if not recorded:  # the caller went away: no verdict on the provider
                    await self.breakers.release(permit)
                    metrics.LLM_CALLS.labels(name, "cancelled").inc()
        raise AllProvidersFailed(result.attempts)


def _account(
    result: RouteResult, outcome: StreamOutcome, request: LlmRequest, text: list[str]
) -> None:
    """Add one attempt's tokens (estimated at 4 characters a token when not reported)."""
    if outcome.usage is not None:
        result.usage.add(outcome.usage)
    elif text:
        prompt = sum(len(m.content) for m in request.messages) // 4
        completion = max(sum(len(t) for t in text) // 4, 1)
        result.usage.add(Usage(prompt, completion, estimated=True))
    if outcome.cited:
        result.cited = list(outcome.cited)
