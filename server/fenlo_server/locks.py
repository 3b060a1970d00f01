"""The one-live-stream-per-conversation lock.

A Chat stream holds its conversation's lock while it is open and renews it;
a lock that is not renewed expires, so a stream of a server that died cannot
hold a conversation for ever. This in-process implementation serves one
server; the Redis implementation (issue "Events, Redis and graceful
degradation") has the same interface and holds across replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class ConversationLocks(Protocol):
    async def acquire(self, key: str, owner: str, ttl: float) -> bool: ...

    async def renew(self, key: str, owner: str, ttl: float) -> bool: ...

    async def release(self, key: str, owner: str) -> None: ...


class LocalConversationLocks:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        now = self._clock()
        held = self._held.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._held[key] = (owner, now + ttl)
        return True

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        held = self._held.get(key)
        if held is None or held[0] != owner:
            return False
        self._held[key] = (owner, self._clock() + ttl)
        return True

    async def release(self, key: str, owner: str) -> None:
        held = self._held.get(key)
        if held is not None and held[0] == owner:
            del self._held[key]
