"""EventService: a workspace's events as a server stream.

The outbox table is the truth, the event bus the fast path. A call subscribes to
the bus first, then replays the stored events after ``start_after_seq`` page by
page, then delivers live events. It tracks the next sequence number it owes the
caller: a live event below it is a duplicate (dropped), one above it means some
were missed (the bus is at least once and replicas race) and the gap is read
from the outbox, whose sequence numbers follow commit order. So the caller gets
every event once, in order, whether it reached this server from its own outbox
or through Redis.

Memory is bounded: live events wait in a queue of ``events_stream_buffer``; when
a slow reader lets it fill, the queue is dropped and the call catches up from
the outbox instead (it falls behind, it loses nothing). A server drain ends every
call with OK.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2
from grpc import aio

from fenlo.v1 import event_pb2, event_pb2_grpc
from fenlo_server import metrics, names
from fenlo_server.api.common import Deps, authorize_workspace, to_timestamp
from fenlo_server.errors import Violations, not_found
from fenlo_server.events import types as event_types
from fenlo_server.events.bus import EventBus, PublishedEvent
from fenlo_server.storage.models import OutboxEventRow
from fenlo_server.storage.outbox import events_after

Ctx = aio.ServicerContext[Any, Any]
REPLAY_PAGE = 500
MAX_TYPES = 64
_END = object()
_ids = itertools.count(1)


def event_to_proto(workspace_id: str, event: PublishedEvent | OutboxEventRow) -> event_pb2.Event:
    payload = struct_pb2.Struct()
    payload.update(dict(event.payload or {}))
    return event_pb2.Event(
        name=names.event(workspace_id, event.id),
        seq=int(event.seq),
        type=event.type,
        create_time=to_timestamp(event.create_time),
        payload=payload,
    )


class _Stream:
    """One StreamEvents call's live queue."""

    def __init__(self, workspace_id: str, capacity: int) -> None:
        self.workspace_id = workspace_id
        self.queue: asyncio.Queue[object] = asyncio.Queue(capacity)
        self.overflowed = False
        self.ended = False

    async def on_event(self, event: PublishedEvent) -> None:
        if event.workspace_id != self.workspace_id or self.ended:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A slow reader: forget the live events, catch up from the outbox.
            self.overflowed = True
            self._clear()

    def has_ended(self) -> bool:
        return self.ended

    def end(self) -> None:
        self.ended = True
        self._clear()
        self.queue.put_nowait(_END)

    def _clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


class EventStreams:
    """The open StreamEvents calls of this server (for the drain on shutdown)."""

    def __init__(self) -> None:
        self._streams: set[_Stream] = set()
        self.draining = False

    def add(self, stream: _Stream) -> None:
        self._streams.add(stream)
        metrics.EVENT_STREAMS.set(len(self._streams))

    def remove(self, stream: _Stream) -> None:
        self._streams.discard(stream)
        metrics.EVENT_STREAMS.set(len(self._streams))

    def drain(self) -> int:
        """End every open call (with OK); return how many."""
        self.draining = True
        for stream in list(self._streams):
            stream.end()
        return len(self._streams)

    @property
    def open(self) -> int:
        return len(self._streams)


class EventServicer(event_pb2_grpc.EventServiceServicer):
    def __init__(self, deps: Deps, bus: EventBus, streams: EventStreams) -> None:
        self._deps = deps
        self._bus = bus
        self._streams = streams

    async def StreamEvents(
        self, request: event_pb2.StreamEventsRequest, context: Ctx
    ) -> AsyncIterator[event_pb2.Event]:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        known = set(event_types.TYPES)
        if len(request.types) > MAX_TYPES:
            violations.add("types", f"at most {MAX_TYPES} types")
        for i, name in enumerate(request.types):
            if name not in known:
                violations.add(f"types[{i}]", f"unknown event type {name[:64]!r}")
        if request.start_after_seq < 0:
            violations.add("start_after_seq", "must not be negative")
        violations.raise_if_any()
        if await self._deps.directory.get(workspace_id) is None:
            raise not_found("workspace", request.parent)
        if self._streams.draining:
            return
        wanted = frozenset(request.types) or None
        stream = _Stream(workspace_id, self._deps.settings.events_stream_buffer)
        # Subscribe before the replay, so nothing committed meanwhile is missed.
        subscription = self._bus.subscribe(f"stream-events-{next(_ids)}", stream.on_event)
        self._streams.add(stream)
        try:
            # The response headers go out now, not with the first event: a caller (or a
            # proxy in between) sees the stream open, and from then on nothing committed
            # is missed.
            await context.send_initial_metadata(())
            next_seq = request.start_after_seq + 1
            catch_up = True
            while not stream.ended:
                if catch_up:
                    stream.overflowed = False
                    async for row in self._stored(workspace_id, next_seq):
                        next_seq = int(row.seq) + 1
                        if wanted is None or row.type in wanted:
                            yield event_to_proto(workspace_id, row)
                        if stream.has_ended():  # drained while replaying
                            return
                    catch_up = False
                item = await stream.queue.get()
                if item is _END:
                    return
                if stream.overflowed:
                    metrics.EVENT_STREAM_CATCH_UPS.labels("overflow").inc()
                    catch_up = True
                    continue
                assert isinstance(item, PublishedEvent)
                if item.seq < next_seq:
                    continue  # delivered already (replay, or a second copy)
                if item.seq > next_seq:
                    metrics.EVENT_STREAM_CATCH_UPS.labels("gap").inc()
                    catch_up = True  # missed some: read them (and this one) from the outbox
                    continue
                next_seq = item.seq + 1
                if wanted is None or item.type in wanted:
                    yield event_to_proto(workspace_id, item)
        finally:
            subscription.close()
            self._streams.remove(stream)

    async def _stored(self, workspace_id: str, from_seq: int) -> AsyncIterator[OutboxEventRow]:
        """The stored events with ``seq >= from_seq``, in order, page by page."""
        after = from_seq - 1
        while True:
            async with self._deps.db.workspace(workspace_id) as session:
                rows = await events_after(session, after, REPLAY_PAGE)
            for row in rows:
                yield row
            if len(rows) < REPLAY_PAGE:
                return
            after = int(rows[-1].seq)
