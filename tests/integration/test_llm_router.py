"""The LLM router with the real `groq` and `openai` SDKs against a local
OpenAI-compatible server (tests/fakes/openai_server.py) that fails on cue."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from fenlo_server import metrics
from fenlo_server.llm.breaker import BreakerPolicy, LocalBreakers, State
from fenlo_server.llm.errors import AllProvidersFailed, ProviderRequestError
from fenlo_server.llm.offline import OfflineProvider
from fenlo_server.llm.openai_compat import (
    CONTINUE_INSTRUCTION,
    ChatCompletionsProvider,
    groq_provider,
    openai_provider,
)
from fenlo_server.llm.router import LlmRouter, ProviderChoice, RouteResult
from fenlo_server.llm.types import ChatMessage, LlmRequest, Passage
from tests.fakes.openai_server import FakeLlmServer, Reply

QUESTION = LlmRequest((ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello")))
WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]
FULL = "".join(WORDS)

MakeProvider = Callable[[FakeLlmServer, str], ChatCompletionsProvider]


def make_groq(server: FakeLlmServer, name: str = "groq") -> ChatCompletionsProvider:
    provider = groq_provider(api_key="test", base_url=server.groq_url, model="g-model", timeout=5)
    provider.name = name
    return provider


def make_openai(server: FakeLlmServer, name: str = "openai") -> ChatCompletionsProvider:
    provider = openai_provider(
        api_key="test", base_url=server.openai_url, model="o-model", timeout=5, request_usage=True
    )
    provider.name = name
    return provider


SDKS = {"groq": make_groq, "openai": make_openai}


@pytest.fixture
async def primary() -> AsyncIterator[FakeLlmServer]:
    async with FakeLlmServer(Reply(tokens=WORDS)) as server:
        yield server


@pytest.fixture
async def secondary() -> AsyncIterator[FakeLlmServer]:
    async with FakeLlmServer(Reply(tokens=["Backup", " answer."])) as server:
        yield server


def router_for(
    providers: list[ChatCompletionsProvider | OfflineProvider],
    *,
    policy: BreakerPolicy | None = None,
    first_token_timeout: float = 2.0,
    stall_timeout: float = 2.0,
    last_resort: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LlmRouter:
    return LlmRouter(
        {p.name: p for p in providers},
        [ProviderChoice(p.name) for p in providers if p.name != "offline"],
        LocalBreakers(policy or BreakerPolicy(minimum_calls=100), clock=clock),
        first_token_timeout=first_token_timeout,
        stall_timeout=stall_timeout,
        last_resort=last_resort,
    )


async def answer(
    router: LlmRouter, request: LlmRequest = QUESTION, **kw: object
) -> tuple[str, RouteResult, list[str]]:
    result = RouteResult()
    deltas = [d async for d in router.stream(request, result=result, **kw)]  # type: ignore[arg-type]
    return "".join(deltas), result, deltas


@pytest.mark.parametrize("sdk", ["groq", "openai"])
async def test_streams_deltas_and_usage_through_each_sdk(sdk: str, primary: FakeLlmServer) -> None:
    router = router_for([SDKS[sdk](primary, sdk)])
    text, result, deltas = await answer(router)
    assert deltas == WORDS
    assert text == FULL
    assert result.providers == [sdk]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, len(WORDS))
    assert not result.usage.estimated
    seen = primary.requests[-1]
    assert seen.path == ("/openai/v1/chat/completions" if sdk == "groq" else "/v1/chat/completions")
    assert seen.body["stream"] is True
    assert seen.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]


FAILURES = {
    "server_error": Reply(status=500),
    "bad_gateway": Reply(status=503),
    "rate_limited": Reply(status=429, headers={"retry-after": "1"}),
    "request_timeout_408": Reply(status=408),
    "hang_before_first_byte": Reply(hang=True),
    "malformed_sse": Reply(malformed_after=0),
    "error_event": Reply(error_event_after=0),
    "cut_before_text": Reply(cut_after=0),
    "clean_end_without_finish": Reply(end_after=0),
    "refused_connection": None,
}
KINDS = {
    "server_error": "server_error",
    "bad_gateway": "server_error",
    "rate_limited": "rate_limited",
    "request_timeout_408": "timeout",
    "hang_before_first_byte": "first_token_timeout",
    "malformed_sse": "malformed",
    "error_event": "stream_error",
    "cut_before_text": "connection",
    "clean_end_without_finish": "truncated",
    "refused_connection": "connection",
}


@pytest.mark.parametrize("sdk", ["groq", "openai"])
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_failover_before_the_first_token_is_invisible(
    sdk: str, failure: str, primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    reply = FAILURES[failure]
    if reply is None:
        dead = FakeLlmServer()
        await dead.start()
        await dead.stop()  # nothing listens on its port any more
        first = SDKS[sdk](dead, sdk)
    else:
        primary.script(reply)
        first = SDKS[sdk](primary, sdk)
    router = router_for([first, make_openai(secondary, "backup")], first_token_timeout=0.5)
    text, result, _ = await answer(router)
    assert text == "Backup answer."  # nothing of the failed provider leaks
    assert result.providers == ["backup"]
    assert [(a.provider, a.outcome) for a in result.attempts] == [
        (sdk, KINDS[failure]),
        ("backup", "ok"),
    ]
    assert result.failovers == 1


@pytest.mark.parametrize("sdk", ["groq", "openai"])
@pytest.mark.parametrize(
    "reply",
    [
        Reply(tokens=WORDS, cut_after=4),
        Reply(tokens=WORDS, end_after=4),
        Reply(tokens=WORDS, malformed_after=4),
        Reply(tokens=WORDS, error_event_after=4),
        Reply(tokens=WORDS, stall_after=4),
    ],
    ids=["connection", "truncated", "malformed", "stream_error", "stalled"],
)
async def test_failover_mid_stream_continues_the_answer_exactly(
    sdk: str,
    reply: Reply,
    primary: FakeLlmServer,
    secondary: FakeLlmServer,
    request: pytest.FixtureRequest,
) -> None:
    primary.script(reply)
    # The secondary restates the last two words before continuing, as models do.
    secondary.default = Reply(
        tokens=[" jumps", " over", " the", " lazy", " dog."], repeat_last_words=2
    )
    router = router_for(
        [SDKS[sdk](primary, sdk), make_openai(secondary, "backup")], stall_timeout=0.5
    )
    text, result, deltas = await answer(router)
    assert text == FULL  # every word once, none lost
    assert result.providers == [sdk, "backup"]
    kind = request.node.callspec.id.split("-")[0]
    assert [a.outcome for a in result.attempts] == [kind, "ok"]
    assert "".join(deltas[:4]) == "The quick brown fox"
    continuation = secondary.requests[-1].messages
    assert continuation[-1] == {"role": "assistant", "content": "The quick brown fox"}
    assert continuation[-2] == {"role": "system", "content": CONTINUE_INSTRUCTION}
    assert continuation[:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]


async def test_a_continuation_without_restatement_is_passed_through(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    primary.script(Reply(tokens=WORDS, cut_after=3))
    secondary.default = Reply(tokens=[" fox", " jumps", " over", " the", " lazy", " dog."])
    router = router_for([make_groq(primary), make_openai(secondary)])
    text, result, _ = await answer(router)
    assert text == FULL
    assert result.providers == ["groq", "openai"]


@pytest.mark.parametrize("sdk", ["groq", "openai"])
@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_request_errors_do_not_fail_over_or_trip_the_breaker(
    sdk: str, status: int, primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    policy = BreakerPolicy(minimum_calls=1, failure_rate=0.1)
    router = router_for([SDKS[sdk](primary, sdk), make_openai(secondary, "backup")], policy=policy)
    for _ in range(3):
        primary.script(Reply(status=status))
        result = RouteResult()
        with pytest.raises(ProviderRequestError) as caught:
            async for _ in router.stream(QUESTION, result=result):
                pass
        assert caught.value.kind == f"http_{status}"
    assert secondary.requests == []  # never asked
    assert router.breakers.state(sdk) is State.CLOSED
    text, _, _ = await answer(router)
    assert text == FULL


async def test_all_providers_failing_is_one_clear_error(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    primary.script(Reply(status=500))
    secondary.script(Reply(status=503))
    router = router_for([make_groq(primary), make_openai(secondary)])
    with pytest.raises(AllProvidersFailed) as caught:
        await answer(router)
    message = str(caught.value)
    assert message.startswith("no LLM provider could answer")
    assert "groq: server_error" in message
    assert "openai: server_error" in message


async def test_the_offline_provider_is_the_last_resort(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    primary.script(Reply(status=500))
    secondary.script(Reply(hang=True))
    router = router_for(
        [make_groq(primary), make_openai(secondary), OfflineProvider()],
        first_token_timeout=0.3,
        last_resort="offline",
    )
    request = LlmRequest(
        (ChatMessage("user", "When does the shop open?"),),
        passages=(Passage(1, "The shop opens at 9am on weekdays.", title="Hours"),),
    )
    text, result, _ = await answer(router, request)
    assert text == "The shop opens at 9am on weekdays [1]."
    assert result.providers == ["offline"]
    assert result.cited == [1]
    assert [a.outcome for a in result.attempts] == ["server_error", "first_token_timeout", "ok"]


async def test_workspace_order_and_models_are_used(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    router = router_for([make_groq(primary), make_openai(secondary)])
    text, result, _ = await answer(
        router, choices=[ProviderChoice("openai", "gpt-4o-mini"), ProviderChoice("groq")]
    )
    assert text == "Backup answer."
    assert result.providers == ["openai"]
    assert secondary.requests[-1].body["model"] == "gpt-4o-mini"
    assert primary.requests == []
    # A choice naming a provider that is not configured is ignored.
    assert router.order([ProviderChoice("groq", "llama"), ProviderChoice("nope")]) == [
        ProviderChoice("groq", "llama")
    ]
    assert router.order([]) == router.default_order


async def test_first_token_and_stall_timeouts(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    router = router_for(
        [make_groq(primary), make_openai(secondary)], first_token_timeout=0.3, stall_timeout=0.3
    )
    primary.script(Reply(tokens=WORDS, first_delay=5))
    started = time.monotonic()
    text, result, _ = await answer(router)
    assert text == "Backup answer."
    assert result.attempts[0].outcome == "first_token_timeout"
    assert time.monotonic() - started < 2.0
    # Slow but steady tokens under the stall timeout are fine.
    primary.script(Reply(tokens=[*WORDS[:4], " jumps over the lazy dog."], token_delay=0.1))
    text, result, _ = await answer(router)
    assert text == FULL
    assert result.providers == ["groq"]


@pytest.mark.parametrize("sdk", ["groq", "openai"])
async def test_closing_the_stream_closes_the_upstream_connection(
    sdk: str, primary: FakeLlmServer
) -> None:
    primary.script(Reply(tokens=WORDS * 20, token_delay=0.05))
    router = router_for([SDKS[sdk](primary, sdk)])
    result = RouteResult()
    stream = router.stream(QUESTION, result=result)
    assert await anext(stream) == "The"
    closed_at = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]
    seen = primary.requests[-1]
    disconnected = await primary.wait_disconnect(seen, within=2.0)
    assert disconnected - closed_at < 0.5
    assert router.breakers.state(sdk) is State.CLOSED  # a caller leaving says nothing of health


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    primary: FakeLlmServer,
) -> None:
    primary.script(Reply(tokens=WORDS * 20, token_delay=0.05))
    router = router_for([make_openai(primary)])
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in router.stream(QUESTION):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await primary.wait_disconnect(primary.requests[-1], within=1.0)


async def test_cancel_while_waiting_for_the_first_byte_closes_the_connection(
    primary: FakeLlmServer,
) -> None:
    primary.script(Reply(hang=True))
    router = router_for([make_groq(primary)], first_token_timeout=30)
    task = asyncio.create_task(answer(router))
    for _ in range(200):
        if primary.requests:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await primary.wait_disconnect(primary.requests[-1], within=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_opens_skips_probes_and_closes(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    clock = Clock()
    policy = BreakerPolicy(
        failure_rate=0.5,
        minimum_calls=3,
        window_seconds=60,
        cooldown_seconds=10,
        half_open_probes=1,
    )
    router = router_for([make_groq(primary), make_openai(secondary)], policy=policy, clock=clock)
    primary.script(Reply(status=500), Reply(status=502), Reply(status=500))
    for _ in range(3):
        text, _, _ = await answer(router)
        assert text == "Backup answer."
    assert router.breakers.state("groq") is State.OPEN
    asked = len(primary.requests)
    text, result, _ = await answer(router)  # open: groq is not even asked
    assert len(primary.requests) == asked
    assert result.attempts[0].outcome == "skipped"
    clock.now += 11  # cool-down over: one probe goes through, fails, and re-opens
    primary.script(Reply(status=500))
    await answer(router)
    assert len(primary.requests) == asked + 1
    assert router.breakers.state("groq") is State.OPEN
    clock.now += 11  # the next probe succeeds and closes the breaker
    text, result, _ = await answer(router)
    assert text == FULL
    assert result.providers == ["groq"]
    assert router.breakers.state("groq") is State.CLOSED


async def test_retry_after_keeps_the_breaker_open_longer(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    clock = Clock()
    policy = BreakerPolicy(minimum_calls=1, failure_rate=0.5, cooldown_seconds=5)
    router = router_for([make_groq(primary), make_openai(secondary)], policy=policy, clock=clock)
    primary.script(Reply(status=429, headers={"retry-after": "30"}))
    await answer(router)
    assert router.breakers.state("groq") is State.OPEN
    clock.now += 10  # past the cool-down, not past Retry-After
    _, result, _ = await answer(router)
    assert result.attempts[0].outcome == "skipped"
    clock.now += 21
    _text, result, _ = await answer(router)
    assert result.providers == ["groq"]


async def test_metrics_count_calls_failures_and_failovers(
    primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    def sample(name: str, labels: dict[str, str]) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    g = make_groq(primary, "groq-metrics")
    o = make_openai(secondary, "openai-metrics")
    router = router_for([g, o])
    primary.script(Reply(tokens=WORDS, cut_after=2))
    before_fail = sample(
        "fenlo_llm_calls_total", {"provider": "groq-metrics", "outcome": "connection"}
    )
    before_ok = sample("fenlo_llm_calls_total", {"provider": "openai-metrics", "outcome": "ok"})
    labels = {
        "from_provider": "groq-metrics",
        "to_provider": "openai-metrics",
        "mid_stream": "true",
    }
    before_failover = sample("fenlo_llm_failovers_total", labels)
    await answer(router)
    assert (
        sample("fenlo_llm_calls_total", {"provider": "groq-metrics", "outcome": "connection"})
        == before_fail + 1
    )
    assert (
        sample("fenlo_llm_calls_total", {"provider": "openai-metrics", "outcome": "ok"})
        == before_ok + 1
    )
    assert sample("fenlo_llm_failovers_total", labels) == before_failover + 1


async def test_two_routers_share_breaker_state_through_redis(
    redis_url: str, primary: FakeLlmServer, secondary: FakeLlmServer
) -> None:
    import uuid

    import redis.asyncio as aioredis

    from fenlo_server.llm.breaker import RedisBreakers

    prefix = f"fenlo:test:router:{uuid.uuid4().hex}:"
    policy = BreakerPolicy(minimum_calls=2, failure_rate=0.5, cooldown_seconds=60)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        routers = [
            LlmRouter(
                {"groq": make_groq(primary), "openai": make_openai(secondary)},
                [ProviderChoice("groq"), ProviderChoice("openai")],
                RedisBreakers(client, policy, prefix=prefix, sync_seconds=0),
                first_token_timeout=2,
                stall_timeout=2,
            )
            for client in clients
        ]
        primary.script(Reply(status=500), Reply(status=500))
        for _ in range(2):  # replica A sees groq fail twice: its breaker opens
            text, _, _ = await answer(routers[0])
            assert text == "Backup answer."
        asked = len(primary.requests)
        text, result, _ = await answer(routers[1])  # replica B never saw a failure
        assert text == "Backup answer."
        assert result.attempts[0].outcome == "skipped"
        assert len(primary.requests) == asked
    finally:
        await clients[0].delete(*await clients[0].keys(prefix + "*") or ["-"])
        for client in clients:
            await client.aclose()
