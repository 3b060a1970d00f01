"""The one-live-stream-per-conversation lock.

A Chat stream holds its conversation's lock while it is open and renews it;
a lock that is not renewed expires, so a stream of a server that died cannot
hold a conversation for ever. :class:`LocalConversationLocks` serves one
server; :class:`RedisConversationLocks` holds across replicas (``SET NX PX``
with the stream's id as owner token; renew and release compare the owner in
Lua) and falls back to the local locks while Redis is down.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from fenlo_server.redis_link import RedisLink, RedisUnavailable

PREFIX = "fenlo:lock:conversation:"
COMPONENT = "locks"

# Take the lock if it is free or already ours.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Extend the lock if it is ours; take it again if it vanished (Redis restarted
# without its data, or it expired during a pause) and nobody else took it.
_RENEW = _ACQUIRE
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""


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


class RedisConversationLocks:
    """Conversation locks shared by every replica through Redis.

    The local locks mirror every lock this server holds, so while Redis is
    down a second stream on the same server is still refused (other servers
    cannot see it then). A lock taken while Redis was down is written to Redis
    by its next renewal once Redis is back, unless another server took it.
    """

    def __init__(
        self, link: RedisLink, local: LocalConversationLocks, *, prefix: str = PREFIX
    ) -> None:
        self._link = link
        self.local = local
        self._prefix = prefix
        redis: Any = link.client
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        try:
            held = await self._link.call(
                COMPONENT,
                lambda: self._acquire(keys=[self._prefix + key], args=[owner, _ms(ttl)]),
            )
        except RedisUnavailable:
            return await self.local.acquire(key, owner, ttl)
        if not held:
            return False
        if not await self.local.acquire(key, owner, ttl):
            # A stream of this server took it while Redis was down and has not
            # renewed it into Redis yet: it is still taken.
            await self.release(key, owner)
            return False
        return True

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        local = await self.local.renew(key, owner, ttl)
        try:
            kept = await self._link.call(
                COMPONENT,
                lambda: self._renew(keys=[self._prefix + key], args=[owner, _ms(ttl)]),
            )
        except RedisUnavailable:
            return local
        return bool(kept)

    async def release(self, key: str, owner: str) -> None:
        await self.local.release(key, owner)
        with contextlib.suppress(RedisUnavailable):  # else it expires in Redis by itself
            await self._link.call(
                COMPONENT, lambda: self._release(keys=[self._prefix + key], args=[owner])
            )


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)
