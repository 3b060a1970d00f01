"""Whether Redis answers, as this server sees it, and the back-off while it does not.

Every shared-state adapter (rate limits, conversation locks, the cache layer,
invalidations) calls Redis through :meth:`RedisLink.call`. A call that fails or
takes longer than ``timeout`` marks Redis *down*: the caller falls back to its
in-process state at once, and while Redis is down no request tries it. A
background probe pings Redis after a back-off (``retry_min`` doubling up to
``retry_max`` seconds) and marks it *up* again when it answers; listeners hear
every change (the health entry ``fenlo.dependency.redis`` and the
``fenlo_dependency_up`` gauge follow it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fenlo_server import metrics

log = logging.getLogger("fenlo.redis")
T = TypeVar("T")
DEPENDENCY = "redis"


class RedisUnavailable(Exception):
    """Redis is down (or just failed): use the local state instead."""


class RedisLink:
    def __init__(
        self,
        client: Any,
        *,
        timeout: float = 0.5,
        retry_min: float = 0.5,
        retry_max: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._timeout = timeout
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._monotonic = monotonic
        self._up = True
        self._backoff = retry_min
        self._down = asyncio.Event()
        self._listeners: list[Callable[[bool], None]] = []
        self._probe: asyncio.Task[None] | None = None
        metrics.DEPENDENCY_UP.labels(DEPENDENCY).set(1)

    @property
    def available(self) -> bool:
        return self._up

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(up)`` whenever Redis goes down or comes back."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Check Redis once (so health is right from the start) and start the probe."""
        if self._probe is None:
            if not await self._ping():
                self.mark_down(RuntimeError("no answer at start"))
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None

    async def call(self, component: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call, or raise :class:`RedisUnavailable` (counted as a fallback)."""
        if not self._up:
            metrics.DEPENDENCY_FALLBACKS.labels(DEPENDENCY, component).inc()
            raise RedisUnavailable("redis is down")
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any Redis trouble: fall back, never fail the request
            self.mark_down(error)
            metrics.DEPENDENCY_FALLBACKS.labels(DEPENDENCY, component).inc()
            raise RedisUnavailable(repr(error)) from error

    def mark_down(self, error: BaseException) -> None:
        if self._up:
            self._up = False
            self._backoff = self._retry_min
            log.warning(
                "redis unavailable: shared state falls back to this server's own",
                extra={"error": repr(error)},
            )
            self._changed()
        self._down.set()

    def _mark_up(self) -> None:
        if not self._up:
            self._up = True
            self._down.clear()
            log.info("redis is back: shared state is shared again")
            self._changed()

    def _changed(self) -> None:
        metrics.DEPENDENCY_UP.labels(DEPENDENCY).set(1 if self._up else 0)
        for listener in list(self._listeners):
            try:
                listener(self._up)
            except Exception:
                log.exception("redis state listener failed")

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self.client.ping()
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return True

    async def _probe_loop(self) -> None:
        while True:
            await self._down.wait()
            # Connections opened before the failure may be dead (a restarted Redis):
            # drop the idle ones, so the first calls after the recovery do not fail on
            # them. Connections in use are left to their calls (they fail by themselves
            # if Redis is gone): closing them under a call that was about to succeed
            # turned one slow reply into errors in every component at once.
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect(inuse_connections=False)
            await asyncio.sleep(self._backoff)
            if await self._ping():
                self._mark_up()
            else:
                self._backoff = min(self._backoff * 2, self._retry_max)
