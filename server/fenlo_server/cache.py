"""Caches: an in-process TTL layer, with a Redis layer under it when configured.

:class:`TtlCache` is the in-process layer. :class:`LayeredCache` reads it, then
Redis, then the loader (the database), and writes what it loaded through to
both. Its invalidation drops the local entry, deletes the Redis entry and
publishes the invalidation on ``fenlo:invalidate`` so every replica drops its
local entry too (see ``invalidation.py``). Redis trouble never fails a read: a
Redis error counts as a miss and the loader answers.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from fenlo_server.invalidation import Invalidations
from fenlo_server.redis_link import RedisLink, RedisUnavailable

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()


class TtlCache(Generic[K, V]):
    def __init__(
        self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < self._clock():
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        value = self.get(key)
        if value is None:
            value = await load()
            if value is not None:
                self.put(key, value)
        return value


COMPONENT = "cache"


class RedisLayer(Generic[V]):
    """Values of one kind in Redis under ``fenlo:cache:<kind>:<key>``, as text.

    Whatever is put here must not be a secret: callers key secrets by a hash
    and store only what a lookup returns.
    """

    def __init__(
        self,
        link: RedisLink,
        kind: str,
        ttl: float,
        encode: Callable[[V], str],
        decode: Callable[[str], V],
    ) -> None:
        self._link = link
        self._prefix = f"fenlo:cache:{kind}:"
        self._ttl_ms = max(int(ttl * 1000), 1)
        self._encode = encode
        self._decode = decode

    async def get(self, key: str) -> V | None:
        client = self._link.client
        try:
            raw = await self._link.call(COMPONENT, lambda: client.get(self._prefix + key))
        except RedisUnavailable:
            return None
        if raw is None:
            return None
        try:
            return self._decode(raw.decode() if isinstance(raw, bytes) else str(raw))
        except Exception:  # an entry of another version: load it afresh
            return None

    async def put(self, key: str, value: V) -> None:
        client = self._link.client
        text = self._encode(value)
        with contextlib.suppress(RedisUnavailable):
            await self._link.call(
                COMPONENT, lambda: client.set(self._prefix + key, text, px=self._ttl_ms)
            )

    async def delete(self, key: str) -> None:
        client = self._link.client
        with contextlib.suppress(RedisUnavailable):
            await self._link.call(COMPONENT, lambda: client.delete(self._prefix + key))


class LayeredCache(Generic[V]):
    """Local layer, then the optional Redis layer, then the loader; invalidated everywhere."""

    def __init__(
        self,
        kind: str,
        local: TtlCache[str, V],
        redis: RedisLayer[V] | None = None,
        invalidations: Invalidations | None = None,
    ) -> None:
        self.kind = kind
        self.local = local
        self.redis = redis
        self._invalidations = invalidations
        if invalidations is not None:
            invalidations.on(kind, local.invalidate)
            invalidations.on_reset(local.clear)

    async def get_or_load(self, key: str, load: Callable[[], Awaitable[V | None]]) -> V | None:
        value = self.local.get(key)
        if value is not None:
            return value
        if self.redis is not None:
            value = await self.redis.get(key)
            if value is not None:
                self.local.put(key, value)
                return value
        value = await load()
        if value is not None:
            self.local.put(key, value)
            if self.redis is not None:
                await self.redis.put(key, value)
        return value

    async def invalidate(self, key: str) -> None:
        """Drop ``key`` here, in Redis and on every other replica."""
        self.local.invalidate(key)
        if self.redis is not None:
            await self.redis.delete(key)
        if self._invalidations is not None:
            await self._invalidations.publish(self.kind, key)
