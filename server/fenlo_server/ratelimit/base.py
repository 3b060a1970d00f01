"""The limiter interface. Backends: in-process (``local.py``) now; the Redis
backend of the issue "Events, Redis and graceful degradation" implements the
same protocol, so the interceptor does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of taking from a rate: allowed, or when to retry."""

    allowed: bool
    retry_after: float = 0.0
    remaining: float = 0.0


class Lease(Protocol):
    """A held slot of a concurrency limit; release it exactly once."""

    def release(self) -> None: ...


class RateLimiter(Protocol):
    async def take(self, key: str, per_minute: int, cost: float = 1.0) -> Decision:
        """Take ``cost`` from the rate of ``key`` (``per_minute`` per minute, that burst)."""
        ...

    async def acquire(self, key: str, limit: int) -> Lease | None:
        """Hold one of ``limit`` concurrent slots of ``key``; None when all are held."""
        ...
