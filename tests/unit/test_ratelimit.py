from __future__ import annotations

import pytest

from fenlo_server.ratelimit.local import LocalRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_bucket_allows_the_burst_then_refuses_with_retry_after() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    for _ in range(60):
        assert (await limiter.take("k", 60)).allowed
    refused = await limiter.take("k", 60)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0)


async def test_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    for _ in range(120):
        await limiter.take("k", 120)
    assert not (await limiter.take("k", 120)).allowed
    clock.now += 0.5  # 120/min = 2/s: one token back after 0.5 s
    assert (await limiter.take("k", 120)).allowed
    assert not (await limiter.take("k", 120)).allowed


async def test_keys_are_independent() -> None:
    limiter = LocalRateLimiter(Clock())
    assert (await limiter.take("a", 1)).allowed
    assert not (await limiter.take("a", 1)).allowed
    assert (await limiter.take("b", 1)).allowed


async def test_concurrency_slots_are_released_once() -> None:
    limiter = LocalRateLimiter(Clock())
    first = await limiter.acquire("s", 2)
    second = await limiter.acquire("s", 2)
    assert first is not None and second is not None
    assert await limiter.acquire("s", 2) is None
    first.release()
    first.release()  # a second release must not free a slot held by someone else
    assert limiter.held("s") == 1
    third = await limiter.acquire("s", 2)
    assert third is not None
    assert await limiter.acquire("s", 2) is None


async def test_a_capacity_larger_than_a_minute_and_forced_charges() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    # A daily budget of 1440 refilled at one a minute: all of it can go at once.
    assert (await limiter.take("day", 1, 1000, capacity=1440)).allowed
    assert not (await limiter.take("day", 1, 500, capacity=1440)).allowed
    # What was already used is charged even past the budget; the bucket owes it.
    decision = await limiter.take("day", 1, 500, capacity=1440, force=True)
    assert decision.allowed and decision.remaining == pytest.approx(-60)
    refused = await limiter.take("day", 1, 1, capacity=1440)
    assert not refused.allowed and refused.retry_after == pytest.approx(61 * 60)


async def test_pruning_keeps_buckets_that_are_not_full_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fenlo_server.ratelimit import local

    monkeypatch.setattr(local, "MAX_BUCKETS", 2)
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    assert (await limiter.take("day", 1, 1440, capacity=1440)).allowed
    assert (await limiter.take("minute", 60)).allowed
    clock.now += 120  # "minute" is full again, "day" has 2 of 1440 back
    assert (await limiter.take("other", 60)).allowed  # prunes
    assert not (await limiter.take("day", 1, 10, capacity=1440)).allowed
