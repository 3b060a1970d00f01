"""In-process limiter: token buckets for rates, counters for concurrency."""

from __future__ import annotations

import time
from collections.abc import Callable

from fenlo_server.ratelimit.base import Decision, Lease

MAX_BUCKETS = 100_000


class _Bucket:
    __slots__ = ("full_at", "tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated
        self.full_at = updated  # when the bucket is full again if nothing more is taken


class _Slot:
    __slots__ = ("_key", "_limiter", "_released")

    def __init__(self, limiter: LocalRateLimiter, key: str) -> None:
        self._limiter = limiter
        self._key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._key)


class LocalRateLimiter:
    """Token buckets of capacity ``per_minute`` refilled at ``per_minute``/60 a second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._held: dict[str, int] = {}

    async def take(
        self,
        key: str,
        per_minute: float,
        cost: float = 1.0,
        *,
        capacity: float | None = None,
        force: bool = False,
    ) -> Decision:
        return self.take_now(key, per_minute, cost, capacity=capacity, force=force)

    def take_now(
        self,
        key: str,
        per_minute: float,
        cost: float = 1.0,
        *,
        capacity: float | None = None,
        force: bool = False,
    ) -> Decision:
        now = self._clock()
        capacity = float(per_minute if capacity is None else capacity)
        rate = per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(capacity, now)
        else:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= cost or force:
            bucket.tokens -= cost
            bucket.full_at = now + (capacity - bucket.tokens) / rate if rate > 0 else float("inf")
            return Decision(True, 0.0, bucket.tokens)
        retry_after = (cost - bucket.tokens) / rate if rate > 0 else 60.0
        return Decision(False, retry_after, bucket.tokens)

    def _prune(self, now: float) -> None:
        """Forget buckets that are full again (a new one starts full, so nothing changes)."""
        for key in [k for k, b in self._buckets.items() if now >= b.full_at]:
            del self._buckets[key]

    async def acquire(self, key: str, limit: int) -> Lease | None:
        held = self._held.get(key, 0)
        if held >= limit:
            return None
        self._held[key] = held + 1
        return _Slot(self, key)

    def _release(self, key: str) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)
