"""The Redis limiter's Lua scripts against the real Redis: the same token buckets as
the in-process limiter (refill, capacity, force, retry_after), concurrency leases
(limit, release, renewal, expiry of a dead holder's lease), keys that expire, and
the conversation locks (owner tokens, expiry, renewal after a lost key).

Every test uses its own key prefix on the shared test Redis and deletes its keys.
Time is a fake clock handed to the scripts (by default they read Redis's TIME), so
refills and expiries are exact and no test waits, except where it says so.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from fenlo_server.locks import LocalConversationLocks, RedisConversationLocks
from fenlo_server.ratelimit.local import LocalRateLimiter
from fenlo_server.ratelimit.redis import RedisRateLimiter
from fenlo_server.redis_link import RedisLink

START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(client: aioredis.Redis) -> AsyncIterator[str]:
    prefix = f"fenlo:test:rl:{uuid.uuid4().hex}:"
    yield prefix
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)


def limiters(
    client: aioredis.Redis, prefix: str
) -> tuple[Clock, RedisRateLimiter, Clock, LocalRateLimiter]:
    redis_clock, local_clock = Clock(), Clock()
    return (
        redis_clock,
        RedisRateLimiter(client, prefix=prefix, clock=redis_clock),
        local_clock,
        LocalRateLimiter(clock=local_clock),
    )


async def test_a_bucket_starts_full_and_refuses_when_spent(
    client: aioredis.Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(client, prefix=prefix, clock=Clock())
    for left in (4, 3, 2, 1, 0):
        decision = await limiter.take("rpm:ws1", 5)
        assert decision.allowed and decision.remaining == pytest.approx(left)
    refused = await limiter.take("rpm:ws1", 5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(12.0)  # one token a 60/5 seconds
    # Another key (another workspace) has its own bucket.
    assert (await limiter.take("rpm:ws2", 5)).allowed


async def test_refill_capacity_and_retry_after(client: aioredis.Redis, prefix: str) -> None:
    clock = Clock()
    limiter = RedisRateLimiter(client, prefix=prefix, clock=clock)
    for _ in range(60):
        assert (await limiter.take("k", 60)).allowed
    assert not (await limiter.take("k", 60)).allowed
    clock.advance(2.5)  # 2.5 tokens back
    assert (await limiter.take("k", 60)).allowed
    assert (await limiter.take("k", 60)).allowed
    refused = await limiter.take("k", 60)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.remaining == pytest.approx(0.5)
    clock.advance(3600)  # a long pause refills only up to capacity
    decision = await limiter.take("k", 60)
    assert decision.remaining == pytest.approx(59)
    # An explicit capacity (a day's budget refilled over a day).
    budget = await limiter.take("tokens:ws", 1440 / 1440, 100, capacity=1440)
    assert budget.allowed and budget.remaining == pytest.approx(1340)
    too_much = await limiter.take("tokens:ws", 1.0, 2000, capacity=1440)
    assert not too_much.allowed
    assert too_much.retry_after == pytest.approx((2000 - 1340) * 60)


async def test_force_takes_beyond_what_is_left(client: aioredis.Redis, prefix: str) -> None:
    clock = Clock()
    limiter = RedisRateLimiter(client, prefix=prefix, clock=clock)
    assert (await limiter.take("t", 60, 50)).allowed
    forced = await limiter.take("t", 60, 30, force=True)
    assert forced.allowed and forced.remaining == pytest.approx(-20)
    refused = await limiter.take("t", 60)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(21.0)  # from -20 up to 1 at one a second
    clock.advance(21)
    assert (await limiter.take("t", 60)).allowed


async def test_same_decisions_as_the_local_limiter(client: aioredis.Redis, prefix: str) -> None:
    redis_clock, redis_limiter, local_clock, local_limiter = limiters(client, prefix)
    steps: list[tuple[float, float, float, float | None, bool]] = [
        (0, 10, 1, None, False),
        (0, 10, 4, None, False),
        (0.3, 10, 6, None, False),
        (1.2, 10, 3, None, False),
        (0, 10, 2, 20, False),
        (5, 10, 9, 20, True),
        (0, 10, 1, 20, False),
        (30, 10, 1, None, False),
        (7, 10, 3, None, False),
    ]
    for wait, per_minute, cost, capacity, force in steps:
        redis_clock.advance(wait)
        local_clock.advance(wait)
        got = await redis_limiter.take("same", per_minute, cost, capacity=capacity, force=force)
        want = local_limiter.take_now("same", per_minute, cost, capacity=capacity, force=force)
        assert got.allowed == want.allowed
        assert got.retry_after == pytest.approx(want.retry_after)
        assert got.remaining == pytest.approx(want.remaining)


async def test_buckets_expire_once_full_again(client: aioredis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(client, prefix=prefix)  # Redis's own clock
    await limiter.take("exp", 60, 3)
    ttl = await client.pttl(prefix + "exp")
    # Full again in 3 s: the key lives about that long (plus a second of slack).
    assert 3000 <= ttl <= 4000, ttl


async def test_leases_limit_release_and_expire(client: aioredis.Redis, prefix: str) -> None:
    clock = Clock()
    limiter = RedisRateLimiter(client, prefix=prefix, clock=clock, lease_seconds=30)
    first = await limiter.acquire("streams:ws", 2)
    second = await limiter.acquire("streams:ws", 2)
    assert first is not None and second is not None
    assert await limiter.acquire("streams:ws", 2) is None
    assert await limiter.held("streams:ws") == 2
    # Another workspace's slots are its own.
    other = await limiter.acquire("streams:other", 2)
    assert other is not None

    first.release()
    first.release()  # twice is once
    await limiter.drain()
    assert await limiter.held("streams:ws") == 1
    third = await limiter.acquire("streams:ws", 2)
    assert third is not None

    # The holder of `second` dies: nobody renews it, and after its lease it is free.
    clock.advance(29)
    assert await limiter.acquire("streams:ws", 2) is None
    assert await limiter.renew("streams:ws", third.lease_id, 2)  # a live holder renews
    clock.advance(2)
    fourth = await limiter.acquire("streams:ws", 2)
    assert fourth is not None
    assert await limiter.held("streams:ws") == 2  # third (renewed) and fourth
    for lease in (second, third, fourth, other):
        lease.release()
    await limiter.drain()
    assert await limiter.held("streams:ws") == 0


async def test_a_held_lease_renews_itself(client: aioredis.Redis, prefix: str) -> None:
    # Real time: a 0.6 s lease renewed every 0.2 s outlives several lease periods.
    limiter = RedisRateLimiter(client, prefix=prefix, lease_seconds=0.6)
    lease = await limiter.acquire("streams:live", 1)
    assert lease is not None
    await asyncio.sleep(1.5)
    assert await limiter.acquire("streams:live", 1) is None
    assert await limiter.held("streams:live") == 1
    lease.release()
    await limiter.drain()
    assert await limiter.acquire("streams:live", 1) is not None
    ttl = await client.pttl(prefix + "streams:live")
    assert 0 < ttl <= 1600, ttl  # the set expires with its last lease


async def test_conversation_locks_owner_expiry_and_renewal(
    client: aioredis.Redis, prefix: str
) -> None:
    link = RedisLink(client)
    one = RedisConversationLocks(link, LocalConversationLocks(), prefix=prefix)
    two = RedisConversationLocks(link, LocalConversationLocks(), prefix=prefix)  # a replica
    assert await one.acquire("ws:c1", "stream-a", 30)
    assert await one.acquire("ws:c1", "stream-a", 30)  # the holder again: still its
    assert not await two.acquire("ws:c1", "stream-b", 30)
    assert not await two.renew("ws:c1", "stream-b", 30)
    await two.release("ws:c1", "stream-b")  # not the owner: changes nothing
    assert not await two.acquire("ws:c1", "stream-b", 30)
    await one.release("ws:c1", "stream-a")
    assert await two.acquire("ws:c1", "stream-b", 0.3)
    # The holder dies (no renewal): the lock expires in Redis.
    await asyncio.sleep(0.5)
    assert await one.acquire("ws:c1", "stream-c", 30)
    # A lock whose key vanished (Redis restarted empty) is taken again by its renewal.
    await client.delete(prefix + "ws:c1")
    assert await one.renew("ws:c1", "stream-c", 30)
    assert await client.get(prefix + "ws:c1") == b"stream-c"
    assert not await two.acquire("ws:c1", "stream-d", 30)
    await one.release("ws:c1", "stream-c")
    assert await client.get(prefix + "ws:c1") is None
