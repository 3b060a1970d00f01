"""Cache invalidations that reach every replica: Redis pub/sub on ``fenlo:invalidate``.

A change (a workspace's settings, a deleted API key, a knowledge base) is
applied to this server's caches at once and published as
``{"kind": ..., "key": ..., "origin": ...}``; every other replica applies it to
its own in-process layer. Pub/sub delivers at most once, so a replica that lost
its subscription (Redis down, restarted, a broken connection) clears its local
layers when it subscribes again: whatever it missed is then read afresh. While
Redis is down nothing is published and local entries live their short TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from fenlo_server.redis_link import RedisLink, RedisUnavailable

log = logging.getLogger("fenlo.invalidation")
CHANNEL = "fenlo:invalidate"
COMPONENT = "invalidation"
RESUBSCRIBE_SECONDS = 1.0

Handler = Callable[[str], None]


class Invalidations:
    """Local handlers by kind, and (with a link) the pub/sub fan-out to other replicas."""

    def __init__(self, link: RedisLink | None = None, *, channel: str = CHANNEL) -> None:
        self._link = link
        self._channel = channel
        self.origin = uuid.uuid4().hex
        self._handlers: dict[str, list[Handler]] = {}
        self._resets: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.subscribed = asyncio.Event()

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(key)`` for every invalidation of ``kind`` (local or remote)."""
        self._handlers.setdefault(kind, []).append(handler)

    def on_reset(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` when invalidations may have been missed (resubscribed)."""
        self._resets.append(handler)

    def apply(self, kind: str, key: str) -> None:
        for handler in self._handlers.get(kind, ()):
            try:
                handler(key)
            except Exception:
                log.exception("invalidation handler failed", extra={"kind": kind})

    def reset(self) -> None:
        for handler in self._resets:
            try:
                handler()
            except Exception:
                log.exception("invalidation reset failed")

    async def publish(self, kind: str, key: str) -> None:
        """Apply here, then tell the other replicas (best effort: never raises)."""
        self.apply(kind, key)
        if self._link is None:
            return
        link = self._link
        message = json.dumps({"kind": kind, "key": key, "origin": self.origin})
        with contextlib.suppress(RedisUnavailable):
            await link.call(COMPONENT, lambda: link.client.publish(self._channel, message))

    def publish_soon(self, kind: str, key: str) -> None:
        """:meth:`publish` from synchronous code (the work runs in the background)."""
        task = asyncio.get_running_loop().create_task(self.publish(kind, key))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def start(self) -> None:
        if self._link is not None and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(self._link))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _listen(self, link: RedisLink) -> None:
        first = True
        while True:
            pubsub: Any = None
            try:
                if link.available:
                    pubsub = link.client.pubsub(ignore_subscribe_messages=True)
                    async with asyncio.timeout(1.0):
                        await pubsub.subscribe(self._channel)
                    if not first:
                        self.reset()  # we may have missed invalidations meanwhile
                    first = False
                    self.subscribed.set()
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._receive(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("invalidation subscription lost", extra={"error": repr(error)})
                first = False
            finally:
                self.subscribed.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    def _receive(self, data: Any) -> None:
        try:
            message = json.loads(data)
            kind, key, origin = message["kind"], message["key"], message.get("origin")
        except (TypeError, ValueError, KeyError):
            log.warning("ignored a malformed invalidation")
            return
        if origin != self.origin and isinstance(kind, str) and isinstance(key, str):
            self.apply(kind, key)
