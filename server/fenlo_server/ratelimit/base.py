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
    async def take(
        self,
        key: str,
        per_minute: float,
        cost: float = 1.0,
        *,
        capacity: float | None = None,
        force: bool = False,
    ) -> Decision:
        """Take ``cost`` from the bucket of ``key``, refilled at ``per_minute`` a minute
        up to ``capacity`` (default: one minute's worth). ``force`` takes it even when
        the bucket cannot cover it (to account for what was already used)."""
        ...

    async def acquire(self, key: str, limit: int) -> Lease | None:
        """Hold one of ``limit`` concurrent slots of ``key``; None when all are held."""
        ...
