"""The Redis limiter: the token buckets of ``local.py``, shared by every replica.

Each operation is one Lua script (loaded once, run by EVALSHA; redis-py loads
it again on NOSCRIPT, e.g. after Redis restarted), so a take or an acquire is
atomic however many servers call it. Time is Redis's own clock (``TIME``), so
replica clocks need not agree. Keys are ``fenlo:rl:`` + the caller's key (which
carries the workspace); every key expires, so nothing is left behind.

- A rate is a hash ``{t: tokens, u: updated}``: the same bucket as the local
  limiter, refilled at ``per_minute``/60 a second up to ``capacity``. It
  expires when it would be full again (a new bucket starts full, so dropping
  it then changes nothing).
- A concurrency limit is a sorted set of lease ids scored by their expiry.
  A lease is renewed while it is held; a server that dies stops renewing, and
  its leases expire after ``lease_seconds`` (expired members are removed
  before every count).

These classes raise on any Redis error; ``shared.py`` turns errors into the
local fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from fenlo_server.ratelimit.base import Decision

log = logging.getLogger("fenlo.ratelimit")
PREFIX = "fenlo:rl:"

_NOW = """
local function now_seconds(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1] bucket; ARGV: rate (tokens a second), capacity, cost, force (0/1), now ('' = TIME)
_TAKE = (
    _NOW
    + """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local force = ARGV[4] == '1'
local now = now_seconds(ARGV[5])
local stored = redis.call('HMGET', key, 't', 'u')
local tokens = tonumber(stored[1])
local updated = tonumber(stored[2])
if tokens == nil or updated == nil then
  tokens = capacity
  updated = now
elseif now > updated then
  tokens = math.min(capacity, tokens + (now - updated) * rate)
  updated = now
end
local allowed = 0
local retry_after = 0
if tokens >= cost or force then
  tokens = tokens - cost
  allowed = 1
elseif rate > 0 then
  retry_after = (cost - tokens) / rate
else
  retry_after = 60
end
redis.call('HSET', key, 't', string.format('%.17g', tokens), 'u', string.format('%.17g', updated))
local ttl_ms = 86400000
if rate > 0 then ttl_ms = math.ceil((capacity - tokens) / rate * 1000) + 1000 end
redis.call('PEXPIRE', key, math.max(ttl_ms, 1000))
return {allowed, string.format('%.17g', retry_after), string.format('%.17g', tokens)}
"""
)

# KEYS[1] lease set; ARGV: lease id, limit, lease seconds, now ('' = TIME)
_ACQUIRE = (
    _NOW
    + """
local key = KEYS[1]
local id = ARGV[1]
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local now = now_seconds(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZSCORE', key, id) == false and redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, now + lease, id)
redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 1000)
return 1
"""
)

# KEYS[1] lease set; ARGV: lease id, limit, lease seconds, now. A lease that expired
# meanwhile (or vanished with a Redis restart) is taken again if there is room.
_RENEW = _ACQUIRE

_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


class RedisLease:
    """A held slot in a Redis lease set, renewed in the background until released."""

    def __init__(self, limiter: RedisRateLimiter, key: str, lease_id: str, limit: int) -> None:
        self._limiter = limiter
        self.key = key
        self.lease_id = lease_id
        self._limit = limit
        self._released = False
        self._renewal = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        interval = self._limiter.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(1.0):
                    kept = await self._limiter.renew(self.key, self.lease_id, self._limit)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis away: the lease expires there by itself
                log.debug("could not renew a lease", extra={"error": repr(error)})
                continue
            if not kept:
                log.warning("a concurrency lease lapsed and its slot was taken")

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._renewal.cancel()
        self._limiter.release_soon(self.key, self.lease_id)


class RedisRateLimiter:
    """The :class:`~fenlo_server.ratelimit.base.RateLimiter` protocol on Redis.

    ``clock`` replaces Redis's ``TIME`` (tests); by default Redis's clock decides.
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = PREFIX,
        lease_seconds: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._redis = redis
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._take = redis.register_script(_TAKE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._pending: set[asyncio.Task[None]] = set()

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def take(
        self,
        key: str,
        per_minute: float,
        cost: float = 1.0,
        *,
        capacity: float | None = None,
        force: bool = False,
    ) -> Decision:
        capacity = float(per_minute if capacity is None else capacity)
        allowed, retry_after, remaining = await self._take(
            keys=[self.prefix + key],
            args=[
                repr(per_minute / 60.0),
                repr(capacity),
                repr(float(cost)),
                "1" if force else "0",
                self._now(),
            ],
        )
        return Decision(bool(allowed), float(retry_after), float(remaining))

    async def acquire(self, key: str, limit: int) -> RedisLease | None:
        lease_id = uuid.uuid4().hex
        held = await self._acquire(
            keys=[self.prefix + key],
            args=[lease_id, limit, repr(self.lease_seconds), self._now()],
        )
        return RedisLease(self, key, lease_id, limit) if held else None

    async def renew(self, key: str, lease_id: str, limit: int) -> bool:
        kept = await self._renew(
            keys=[self.prefix + key],
            args=[lease_id, limit, repr(self.lease_seconds), self._now()],
        )
        return bool(kept)

    async def release_lease(self, key: str, lease_id: str) -> None:
        await self._release(keys=[self.prefix + key], args=[lease_id])

    def release_soon(self, key: str, lease_id: str) -> None:
        """Release in the background (``Lease.release`` is synchronous)."""
        task = asyncio.get_running_loop().create_task(self._release_quietly(key, lease_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release_quietly(self, key: str, lease_id: str) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self.release_lease(key, lease_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the lease expires by itself
            log.debug("could not release a lease", extra={"error": repr(error)})

    async def held(self, key: str) -> int:
        """Leases of ``key`` not yet expired (tests and diagnostics)."""
        now = self._now()
        if now:
            return int(await self._redis.zcount(self.prefix + key, f"({now}", "+inf"))
        seconds, micros = await self._redis.time()
        return int(await self._redis.zcount(self.prefix + key, f"({seconds}.{micros:06d}", "+inf"))

    async def drain(self) -> None:
        """Wait for background releases (on shutdown)."""
        if self._pending:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._pending, return_exceptions=True)
