"""The outbox relay: publishes committed outbox events to this server's event bus
and, with Redis, to Redis Streams, so every replica sees them.

Three paths carry an event (docs/events.md has the whole picture):

1. **On commit** (:meth:`OutboxRelay.committed`): the database hands the relay the
   rows of every transaction that wrote events, right after the commit. They go to
   the local bus at once (so a local Chat stream gets an agent's message before
   PostAgentMessage returns) and the relay is woken.
2. **The relay loop**: woken on commit, and at least every
   ``events_relay_poll_seconds``, it takes the oldest unpublished rows of every
   workspace (``published_time IS NULL``), publishes each to the local bus and to
   Redis (``XADD`` to ``{prefix}:ws:{workspace}:events`` and to the shared
   ``{prefix}:events``), then sets ``published_time``. Polling also catches the
   events of other replicas and of writers that crashed between commit and publish.
3. **The stream consumer**: every replica reads ``{prefix}:events`` with
   ``XREAD BLOCK`` and publishes what other replicas wrote into its local bus.

Delivery is at least once. On PostgreSQL, rows are claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` inside the transaction that publishes them
and marks them, so several replicas' relays share the work and a row is sent once
unless a relay dies between ``XADD`` and commit. On SQLite there is one writer at a
time and the clause is ignored; two relays on one file may send a row twice. Every
event carries its id and its workspace's sequence number and every consumer drops
ids it has seen (the bus), or reorders and deduplicates by sequence
(StreamEvents), so duplicates have no effect.

Redis away (or slow): events stay unpublished in the outbox and nothing is lost;
the local bus still gets them (on commit, and for the last
``events_local_window_seconds`` from the poll, which also covers other replicas
sharing the database); the relay retries Redis with backoff and then sends the
backlog in order. Redis restarted empty (it keeps nothing on disk): the relay
notices that the marker key ``{prefix}:events:epoch`` is gone, sets it again (one
replica wins ``SET NX``) and rebuilds the workspace streams from the outbox
events of the last ``events_rebuild_seconds`` (at most
``events_rebuild_max_events``). The shared fan-out stream is not rebuilt: every
replica has seen those events already, and replaying them would push old agent
messages into live Chat streams of restarted replicas.

Tenancy: the relay is a system task without a caller and serves every workspace,
so it reads the outbox in an unscoped session (``Database.unscoped`` with its
reason). It only reads events and sets ``published_time``; every event it
publishes keeps its own workspace id, and each workspace has its own Redis stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from fenlo_server import metrics
from fenlo_server.config import Settings
from fenlo_server.events.bus import EventBus, PublishedEvent
from fenlo_server.storage import outbox
from fenlo_server.storage.db import Database
from fenlo_server.storage.models import OutboxEventRow, utcnow

log = logging.getLogger("fenlo.events.relay")

UNSCOPED_REASON = "the outbox relay publishes every workspace's events (a system task)"
_BACKOFF_START = 0.2
_BACKOFF_MAX = 5.0


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


def published(row: OutboxEventRow) -> PublishedEvent:
    return PublishedEvent(
        id=row.id,
        workspace_id=row.workspace_id,
        seq=int(row.seq),
        type=row.type,
        payload=dict(row.payload or {}),
        create_time=row.create_time,
    )


def _order(rows: Iterable[OutboxEventRow]) -> list[OutboxEventRow]:
    """Each workspace's events in sequence order (workspaces interleaved by id)."""
    return sorted(rows, key=lambda r: (r.workspace_id, r.seq))


def _entry_id(value: str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a comparable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


class StreamKeys:
    """The Redis keys of the event streams."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.shared = f"{prefix}:events"
        self.epoch = f"{prefix}:events:epoch"

    def workspace(self, workspace_id: str) -> str:
        return f"{self.prefix}:ws:{workspace_id}:events"


def stream_fields(row: OutboxEventRow, origin: str) -> dict[str, str]:
    """One event as a Redis stream entry (every value a string)."""
    return {
        "id": row.id,
        "workspace": row.workspace_id,
        "seq": str(row.seq),
        "type": row.type,
        "payload": json.dumps(row.payload or {}, separators=(",", ":"), sort_keys=True),
        "create_time": row.create_time.isoformat(),
        "origin": origin,
    }


def event_from_fields(fields: dict[str, str]) -> PublishedEvent:
    """The event a stream entry carries (the inverse of :func:`stream_fields`)."""
    payload = json.loads(fields.get("payload") or "{}")
    created = fields.get("create_time")
    return PublishedEvent(
        id=fields["id"],
        workspace_id=fields["workspace"],
        seq=int(fields["seq"]),
        type=fields["type"],
        payload=payload if isinstance(payload, dict) else {},
        create_time=datetime.fromisoformat(created) if created else None,
    )


# How long stop() lets the relay's loops end by themselves before cancelling them
# (a Redis read blocks for events_redis_block_ms).
STOP_WAIT_SECONDS = 2.0


class OutboxRelay:
    """Publishes the outbox (see the module docstring); ``start()`` / ``stop()``."""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        settings: Settings,
        *,
        redis: Any | None = None,
        replica_id: str | None = None,
        consume: bool = True,
    ) -> None:
        self._db = db
        self._bus = bus
        self._settings = settings
        self._redis = redis
        # Whether to read the other replicas' events into the local bus (a worker,
        # which serves no streams, only publishes).
        self._consume_remote = consume
        self.replica_id = replica_id or uuid.uuid4().hex[:16]
        self.keys = StreamKeys(settings.events_redis_prefix)
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._consumer_redis: Any | None = None
        self._redis_retry_at = 0.0
        self._redis_backoff = _BACKOFF_START
        self._epoch: str | None = None
        # What the consumer last read from the shared stream (tests wait on it).
        self.consumed_id = ""
        self.rebuilds = 0

    # -- the commit path --------------------------------------------------------------

    async def committed(self, rows: list[OutboxEventRow]) -> None:
        """Rows of a transaction that just committed: to the local bus now, to Redis soon."""
        for row in _order(rows):
            if await self._bus.publish(published(row)):
                metrics.EVENTS_PUBLISHED.labels("local").inc()
        self._wake.set()

    def notify(self) -> None:
        """Wake the relay (something was committed)."""
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run(), name="outbox-relay"))
        if self._consume_remote and self._redis is not None and self._settings.redis_url:
            self._tasks.append(loop.create_task(self._consume(), name="event-stream-consumer"))

    async def stop(self) -> None:
        # Python 3.11's wait_for (and a Redis read being cancelled) can swallow a
        # cancellation that races with a wake-up, so the loops also check a flag, and
        # the tasks are cancelled again until they end (bounded).
        self._stopping = True
        self._wake.set()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            # Let a pass in progress finish first: a task cancelled inside a database
            # session has its connection's rollback cancelled too.
            _done, pending = await asyncio.wait(pending, timeout=STOP_WAIT_SECONDS)
        for _ in range(50):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.1)
        if pending:
            log.warning("event relay tasks did not stop", extra={"tasks": len(pending)})
        self._tasks = []
        if self._consumer_redis is not None:
            with contextlib.suppress(Exception):
                await self._consumer_redis.aclose()
            self._consumer_redis = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def redis_available(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._redis_retry_at

    # -- the relay loop -----------------------------------------------------------------

    async def _run(self) -> None:
        poll = self._settings.events_relay_poll_seconds
        coalesce = self._settings.events_relay_coalesce_seconds
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()
            if self.stopping:
                return
            if coalesce and self._wake.is_set():
                # Gather the commits that follow this one (a stop meanwhile lets this
                # last pass run, as one already running would).
                await asyncio.sleep(coalesce)
            self._wake.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again on the next poll
                log.warning("outbox relay pass failed", extra={"error": repr(exc)[:300]})

    async def drain(self) -> int:
        """One pass: send what is unpublished; return how many events were marked."""
        async with self._drain_lock:
            if self._redis is None:
                return await self._publish_batches(to_redis=False)
            if self.redis_available and await self._check_epoch():
                marked = await self._publish_batches(to_redis=True)
                if self.redis_available:
                    return marked
            await self._publish_recent_locally()
            return 0

    async def _publish_batches(self, *, to_redis: bool) -> int:
        """Claim, send and mark batches until none is left (or Redis fails)."""
        batch = self._settings.events_relay_batch
        marked = 0
        for _ in range(10_000):  # bounded; a pass normally ends long before
            async with self._db.unscoped(UNSCOPED_REASON) as session:
                rows = _order(await outbox.claim_unpublished(session, batch))
                if not rows:
                    break
                sent = True
                if to_redis:
                    sent = await self._xadd(rows)
                if sent:
                    await outbox.mark_published(session, [r.id for r in rows], utcnow())
            # After the commit: the local bus (again, for rows this replica committed;
            # the bus drops ids it has already delivered).
            for row in rows:
                if await self._bus.publish(published(row)):
                    metrics.EVENTS_PUBLISHED.labels("local").inc()
            if not sent:
                break
            marked += len(rows)
            if len(rows) < batch:
                break
        return marked

    async def _publish_recent_locally(self) -> None:
        """Redis is away: recent unpublished events (any replica's) to the local bus."""
        since = utcnow() - timedelta(seconds=self._settings.events_local_window_seconds)
        after = ""
        for _ in range(1_000):
            async with self._db.unscoped(UNSCOPED_REASON) as session:
                rows = await outbox.unpublished_after(
                    session, after, since, self._settings.events_relay_batch
                )
            for row in _order(rows):
                if await self._bus.publish(published(row)):
                    metrics.EVENTS_PUBLISHED.labels("local").inc()
            if len(rows) < self._settings.events_relay_batch:
                return
            after = rows[-1].id

    def _redis_failed(self, what: str, exc: BaseException) -> None:
        if self.redis_available:
            log.warning(
                "Redis unavailable for events; they wait in the outbox",
                extra={"during": what, "error": repr(exc)[:300]},
            )
        self._redis_retry_at = time.monotonic() + self._redis_backoff
        self._redis_backoff = min(self._redis_backoff * 2, _BACKOFF_MAX)
        metrics.EVENTS_REDIS_FAILURES.inc()

    def _redis_ok(self) -> None:
        if self._redis_backoff > _BACKOFF_START:
            log.info("Redis reachable again; publishing the outbox backlog")
        self._redis_backoff = _BACKOFF_START

    async def _xadd(self, rows: list[OutboxEventRow]) -> bool:
        assert self._redis is not None
        settings = self._settings
        try:
            pipe = self._redis.pipeline(transaction=False)
            for row in rows:
                fields = stream_fields(row, self.replica_id)
                pipe.xadd(
                    self.keys.workspace(row.workspace_id),
                    fields,
                    maxlen=settings.events_stream_maxlen,
                    approximate=True,
                )
                pipe.xadd(
                    self.keys.shared,
                    fields,
                    maxlen=settings.events_global_stream_maxlen,
                    approximate=True,
                )
            await pipe.execute()
        except _redis_errors() as exc:
            self._redis_failed("publish", exc)
            return False
        self._redis_ok()
        metrics.EVENTS_PUBLISHED.labels("redis").inc(len(rows))
        return True

    # -- rebuilding after Redis lost its data --------------------------------------------

    async def _check_epoch(self) -> bool:
        """Make sure the streams exist in this Redis; rebuild them if it lost its data.
        False when Redis failed."""
        assert self._redis is not None
        try:
            value = await self._redis.get(self.keys.epoch)
            if value is not None:
                self._epoch = value.decode() if isinstance(value, bytes) else str(value)
                self._redis_ok()
                return True
            epoch = f"{self.replica_id}:{time.time_ns()}"
            won = await self._redis.set(self.keys.epoch, epoch, nx=True)
        except _redis_errors() as exc:
            self._redis_failed("epoch", exc)
            return False
        if not won:  # another replica is rebuilding
            return True
        lost = self._epoch is not None
        self._epoch = epoch
        try:
            count = await self._rebuild()
        except _redis_errors() as exc:
            with contextlib.suppress(*_redis_errors()):
                await self._redis.delete(self.keys.epoch)  # let the next pass try again
            self._redis_failed("rebuild", exc)
            return False
        self.rebuilds += 1
        log.info(
            "event streams rebuilt from the outbox" if lost else "event streams initialised",
            extra={"events": count, "epoch": epoch},
        )
        return True

    async def _rebuild(self) -> int:
        """Re-add recent published events to the workspace streams, in sequence order."""
        settings = self._settings
        if settings.events_rebuild_max_events == 0:
            return 0
        since = utcnow() - timedelta(seconds=settings.events_rebuild_seconds)
        async with self._db.unscoped(UNSCOPED_REASON) as session:
            rows = _order(
                await outbox.recent_published(session, since, settings.events_rebuild_max_events)
            )
        assert self._redis is not None
        for start in range(0, len(rows), 500):
            pipe = self._redis.pipeline(transaction=False)
            for row in rows[start : start + 500]:
                pipe.xadd(
                    self.keys.workspace(row.workspace_id),
                    stream_fields(row, self.replica_id),
                    maxlen=settings.events_stream_maxlen,
                    approximate=True,
                )
            await pipe.execute()
        return len(rows)

    # -- the consumer of the other replicas' events ----------------------------------------

    def _consumer_client(self) -> Any:
        import redis.asyncio

        assert self._settings.redis_url is not None
        block = self._settings.events_redis_block_ms / 1000
        return redis.asyncio.Redis.from_url(
            self._settings.redis_url,
            socket_timeout=block + 1.0,
            socket_connect_timeout=0.5,
            decode_responses=True,
        )

    async def _consume(self) -> None:
        """Read the shared stream into the local bus, for as long as the server runs."""
        self._consumer_redis = client = self._consumer_client()
        block = self._settings.events_redis_block_ms
        last: str | None = None
        reseek = False
        backoff = _BACKOFF_START
        while not self._stopping:
            # The entries read live only in the helpers' frames: this loop, which
            # waits in XREAD most of the time, keeps no event (an erased one would
            # stay in memory until the next read).
            try:
                if last is None:
                    # Start at the end: older events went out before this replica
                    # had anyone to give them to (StreamEvents replays from the outbox).
                    last = await self._newest_id(client) or "0-0"
                    self.consumed_id = last
                elif reseek:
                    # After an error: if Redis restarted empty, its new stream may end
                    # below where we were; then everything in it is new to us.
                    newest = await self._newest_id(client)
                    if newest is None or _entry_id(newest) < _entry_id(last):
                        last = "0-0"
                reseek = False
                last = await self._deliver_all(
                    await client.xread({self.keys.shared: last}, block=block, count=500), last
                )
                backoff = _BACKOFF_START
            except asyncio.CancelledError:
                raise
            except _redis_errors() as exc:
                log.debug("event stream read failed", extra={"error": repr(exc)[:300]})
                reseek = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _newest_id(self, client: Any) -> str | None:
        newest = await client.xrevrange(self.keys.shared, count=1)
        return str(newest[0][0]) if newest else None

    async def _deliver_all(self, answer: Any, last: str) -> str:
        """Publish what one XREAD returned; the id of the last entry read."""
        for _stream, entries in answer or ():
            for entry_id, fields in entries:
                last = entry_id
                await self._deliver(fields)
                self.consumed_id = entry_id
        return last

    async def _deliver(self, fields: dict[str, str]) -> None:
        if fields.get("origin") == self.replica_id:
            return  # this replica published it to its own bus already
        try:
            event = event_from_fields(fields)
        except (KeyError, ValueError) as exc:
            log.warning("malformed event stream entry", extra={"error": repr(exc)[:200]})
            return
        if await self._bus.publish(event):
            metrics.EVENTS_PUBLISHED.labels("remote").inc()
