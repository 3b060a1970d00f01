"""Redis when it answers, this server's own buckets when it does not.

Every call goes to Redis through the :class:`~fenlo_server.redis_link.RedisLink`;
a failing or slow call (and every call while Redis is marked down) is served
by the :class:`~fenlo_server.ratelimit.local.LocalRateLimiter` instead, so a
request is never refused or delayed because Redis is away. While degraded the
limits are per server, not shared; they are shared again as soon as the link
sees Redis back.
"""

from __future__ import annotations

from fenlo_server.ratelimit.base import Decision, Lease
from fenlo_server.ratelimit.local import LocalRateLimiter
from fenlo_server.ratelimit.redis import RedisRateLimiter
from fenlo_server.redis_link import RedisLink, RedisUnavailable

COMPONENT = "ratelimit"


class SharedRateLimiter:
    def __init__(self, redis: RedisRateLimiter, link: RedisLink, local: LocalRateLimiter) -> None:
        self.redis = redis
        self.link = link
        self.local = local

    async def take(
        self,
        key: str,
        per_minute: float,
        cost: float = 1.0,
        *,
        capacity: float | None = None,
        force: bool = False,
    ) -> Decision:
        try:
            return await self.link.call(
                COMPONENT,
                lambda: self.redis.take(key, per_minute, cost, capacity=capacity, force=force),
            )
        except RedisUnavailable:
            return self.local.take_now(key, per_minute, cost, capacity=capacity, force=force)

    async def acquire(self, key: str, limit: int) -> Lease | None:
        try:
            return await self.link.call(COMPONENT, lambda: self.redis.acquire(key, limit))
        except RedisUnavailable:
            return await self.local.acquire(key, limit)

    async def drain(self) -> None:
        await self.redis.drain()
