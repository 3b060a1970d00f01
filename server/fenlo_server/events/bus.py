"""The in-process event bus: published outbox events fanned out to this server's
subscribers (the live event streams, webhooks, cache invalidation, agent
messages into Chat streams).

Delivery is at least once: the relay may hand the same event over again (after
a restart, or when it reaches this replica both from its own outbox and from
Redis). Every event carries its id and its workspace's sequence number, and the
bus drops an id it has already delivered, so a subscriber sees each event once
per process; subscribers whose effect must survive a restart (webhooks)
deduplicate by id in their own store as well.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger("fenlo.events")


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """An outbox event as subscribers see it."""

    id: str
    workspace_id: str
    seq: int
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    create_time: datetime | None = None


Handler = Callable[[PublishedEvent], Awaitable[None]]


class Subscription:
    """One subscriber; ``close()`` stops delivery to it."""

    def __init__(
        self, bus: EventBus, name: str, handler: Handler, types: frozenset[str] | None
    ) -> None:
        self._bus = bus
        self.name = name
        self.handler = handler
        self.types = types

    def wants(self, event: PublishedEvent) -> bool:
        return self.types is None or event.type in self.types

    def close(self) -> None:
        self._bus._subscriptions.discard(self)


class SeenIds:
    """A bounded memory of event ids already handled (oldest forgotten first)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False when it was already there."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids


class EventBus:
    """Fan-out of published events to subscribers, in publish order, each event once."""

    def __init__(self, seen_capacity: int = 100_000) -> None:
        self._subscriptions: set[Subscription] = set()
        self._seen = SeenIds(seen_capacity)

    def subscribe(
        self, name: str, handler: Handler, *, types: Collection[str] | None = None
    ) -> Subscription:
        """Call ``handler`` for every new event (of ``types``, if given)."""
        sub = Subscription(self, name, handler, frozenset(types) if types is not None else None)
        self._subscriptions.add(sub)
        return sub

    async def publish(self, event: PublishedEvent) -> bool:
        """Deliver ``event`` to every subscriber that wants it; False for a duplicate.

        A failing subscriber is logged and does not stop the others."""
        if not self._seen.add(event.id):
            return False
        for sub in list(self._subscriptions):
            if not sub.wants(event):
                continue
            try:
                await sub.handler(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "event subscriber failed",
                    extra={"subscriber": sub.name, "event_id": event.id, "type": event.type},
                )
        return True

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)
