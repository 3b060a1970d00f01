"""Background jobs on ARQ workers (`fenlo worker`) when Redis is configured:
document ingestion, webhook delivery, the retention cron job and an outbox relay.

The server enqueues; any number of worker processes run the jobs. Each worker
also runs an outbox relay (``events/relay.py``), so the events its jobs commit
(document ready or failed) reach Redis Streams, and so every replica, at once
rather than at a server's next poll; it shares the outbox with the servers'
relays like one more replica.

Job ids carry the document's generation, so a document queued twice runs once,
and the workspace id, so that a deleted workspace's queued jobs go with its other
Redis keys (``lifecycle.py``).
If Redis cannot take a job, the server runs it in-process instead: a Redis
outage never loses an upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fenlo_server.config import Settings
from fenlo_server.jobs.ingestion import Ingestor, InProcessQueue
from fenlo_server.jobs.retention import RetentionLimits, run_retention

log = logging.getLogger("fenlo.jobs")
INGEST = "ingest_document"
RETENTION = "retention"


DELIVER_WEBHOOK = "deliver_webhook"


def ingest_job_id(workspace_id: str, document_id: str, generation: int) -> str:
    return f"ingest:{workspace_id}:{document_id}:{generation}"


def redis_settings(url: str) -> Any:
    from arq.connections import RedisSettings

    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 1
    settings.conn_retries = 1
    return settings


class ArqQueue:
    def __init__(
        self, redis_url: str, fallback: InProcessQueue, *, queue_name: str = "fenlo:jobs"
    ) -> None:
        self._url = redis_url
        self._queue_name = queue_name
        self._fallback = fallback
        self._pool: Any = None

    async def enqueue_ingest(self, workspace_id: str, document_id: str, generation: int) -> None:
        try:
            if self._pool is None:
                from arq import create_pool

                self._pool = await create_pool(redis_settings(self._url))
            await self._pool.enqueue_job(
                INGEST,
                workspace_id,
                document_id,
                generation,
                _job_id=ingest_job_id(workspace_id, document_id, generation),
                _queue_name=self._queue_name,
            )
        except Exception as error:
            log.warning(
                "redis could not take the ingestion job; running it in-process",
                extra={"document": document_id, "error": repr(error)},
            )
            self._pool = None
            await self._fallback.enqueue_ingest(workspace_id, document_id, generation)

    async def enqueue_delivery(
        self, workspace_id: str, delivery_id: str, attempt: int, when: datetime
    ) -> None:
        """Queue one webhook attempt for ``when``; raises when Redis cannot take it
        (the dispatcher then sends it in-process)."""
        try:
            if self._pool is None:
                from arq import create_pool

                self._pool = await create_pool(redis_settings(self._url))
            await enqueue_delivery(
                self._pool,
                self._queue_name,
                workspace_id=workspace_id,
                delivery_id=delivery_id,
                attempt=attempt,
                when=when,
            )
        except Exception:
            self._pool = None
            raise

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


async def ingest_document(
    ctx: dict[str, Any], workspace_id: str, document_id: str, generation: int
) -> str:
    ingestor: Ingestor = ctx["ingestor"]
    return await ingestor.process(workspace_id, document_id, generation)


async def sweep(ctx: dict[str, Any]) -> int:
    """Queue documents left behind (a crashed worker, a lost job)."""
    ingestor: Ingestor = ctx["ingestor"]
    stale = await ingestor.stale()
    for workspace_id, document_id, generation in stale:
        await ctx["redis"].enqueue_job(
            INGEST,
            workspace_id,
            document_id,
            generation,
            # A distinct id per sweep minute: a lost job's id stays taken until ARQ
            # lets its data expire.
            _job_id=ingest_job_id(workspace_id, document_id, generation)
            + f":retry:{int(time.time() // 60)}",
            _queue_name=ctx["queue_name"],
        )
    return len(stale)


async def retention(ctx: dict[str, Any]) -> int:
    """One retention run over every workspace; returns how many messages it removed."""
    results = await run_retention(ctx["db"], limits=ctx["retention_limits"])
    return sum(p.messages for p in results.values())


def retention_schedule(interval_seconds: float) -> dict[str, Any] | None:
    """ARQ cron arguments that run every ``interval_seconds``, rounded to whole
    minutes below an hour and to whole hours above; None when disabled."""
    if interval_seconds <= 0:
        return None
    if interval_seconds < 3600:
        step = max(int(interval_seconds // 60), 1)
        return {"minute": set(range(0, 60, step)), "second": 0}
    step = min(max(int(interval_seconds // 3600), 1), 24)
    return {"hour": set(range(0, 24, step)), "minute": 0, "second": 0}


async def enqueue_delivery(
    pool: Any,
    queue_name: str,
    *,
    workspace_id: str,
    delivery_id: str,
    attempt: int,
    when: datetime,
    job_suffix: str = "",
) -> None:
    # One job id per attempt, so an attempt queued twice runs once.
    await pool.enqueue_job(
        DELIVER_WEBHOOK,
        workspace_id,
        delivery_id,
        _job_id=f"webhook:{workspace_id}:{delivery_id}:{attempt}{job_suffix}",
        _defer_until=when,
        _queue_name=queue_name,
    )


class _WorkerQueue:
    """The worker queues the retries of the attempts it makes on its own pool."""

    def __init__(self, pool: Any, queue_name: str) -> None:
        self._pool = pool
        self._queue_name = queue_name

    async def enqueue_delivery(
        self, workspace_id: str, delivery_id: str, attempt: int, when: datetime
    ) -> None:
        await enqueue_delivery(
            self._pool,
            self._queue_name,
            workspace_id=workspace_id,
            delivery_id=delivery_id,
            attempt=attempt,
            when=when,
        )


async def deliver_webhook(ctx: dict[str, Any], workspace_id: str, delivery_id: str) -> str:
    """One attempt of a webhook delivery (its retry is queued by the attempt)."""
    return str(await ctx["webhooks"].deliver(workspace_id, delivery_id))


async def sweep_webhooks(ctx: dict[str, Any]) -> int:
    """Queue deliveries that are overdue (a lost job, Redis restarted empty, a
    retry the server could not queue)."""
    due = await ctx["webhooks"].due(older_than=10.0)
    suffix = f":sweep:{int(time.time() // 60)}"
    for workspace_id, delivery_id in due:
        await enqueue_delivery(
            ctx["redis"],
            ctx["queue_name"],
            workspace_id=workspace_id,
            delivery_id=delivery_id,
            attempt=0,
            when=datetime.now().astimezone(),
            job_suffix=suffix,
        )
    return len(due)


def make_startup(settings: Settings) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def startup(ctx: dict[str, Any]) -> None:
        from fenlo_server.app import build_secret_box, open_database, redis_client
        from fenlo_server.events.bus import EventBus
        from fenlo_server.events.relay import OutboxRelay
        from fenlo_server.events.webhooks import WebhookDispatcher
        from fenlo_server.jobs.factory import build_ingestor

        assert settings.redis_url
        ctx["db"] = db = await open_database(settings)
        ctx["ingestor"] = build_ingestor(settings, ctx["db"])
        ctx["queue_name"] = settings.jobs_queue
        ctx["retention_limits"] = RetentionLimits.from_settings(settings)
        ctx["webhooks"] = WebhookDispatcher(
            ctx["db"],
            settings,
            build_secret_box(settings),
            queue=_WorkerQueue(ctx["redis"], settings.jobs_queue),
        )
        # The outbox relay: this worker's commits go to its bus (the webhooks record
        # their deliveries) and to Redis for every replica.
        ctx["bus"] = bus = EventBus()
        ctx["events_redis"] = events_redis = redis_client(settings.redis_url)
        ctx["relay"] = relay = OutboxRelay(db, bus, settings, redis=events_redis, consume=False)
        db.on_events_committed = relay.committed
        bus.subscribe("webhooks", ctx["webhooks"].on_event)
        relay.start()
        ctx["webhooks"].start()
        for workspace_id, document_id, generation in await ctx["ingestor"].outdated():
            await ctx["redis"].enqueue_job(
                INGEST,
                workspace_id,
                document_id,
                generation,
                _job_id=ingest_job_id(workspace_id, document_id, generation),
                _queue_name=settings.jobs_queue,
            )

    return startup


async def shutdown(ctx: dict[str, Any]) -> None:
    relay = ctx.get("relay")
    if relay is not None:
        await relay.stop()
        # What the last jobs committed goes to Redis now (bounded; the rest waits in
        # the outbox for the next relay).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay.drain(), 1.0)
        ctx["db"].on_events_committed = None
    webhooks = ctx.get("webhooks")
    if webhooks is not None:
        await webhooks.stop()
    db = ctx.get("db")
    if db is not None:
        await db.dispose()
    events_redis = ctx.get("events_redis")
    if events_redis is not None:
        await events_redis.aclose()


def worker_settings(settings: Settings) -> dict[str, Any]:
    from arq import cron, func

    assert settings.redis_url
    cron_jobs = [
        cron(sweep, second={0, 30}, run_at_startup=True),
        cron(sweep_webhooks, second={5, 15, 25, 35, 45, 55}, run_at_startup=True),
    ]
    schedule = retention_schedule(settings.retention_interval_seconds)
    if schedule is not None:
        # unique (ARQ's default): one worker runs each scheduled retention run.
        cron_jobs.append(cron(retention, name=RETENTION, timeout=3600, **schedule))
    # Ingestion and delivery jobs keep no result: nothing reads them, the database's
    # claims make a job that runs twice harmless, and a result (which holds the job's
    # arguments) would outlive the deletion of its workspace by ARQ's hour.
    return {
        "functions": [
            func(ingest_document, name=INGEST, max_tries=3, timeout=600, keep_result=0),
            # Retries are the delivery's own (backoff, dead letter), not ARQ's.
            func(
                deliver_webhook,
                name=DELIVER_WEBHOOK,
                max_tries=1,
                timeout=settings.webhook_timeout_seconds * 2 + 5,
                keep_result=0,
            ),
        ],
        "cron_jobs": cron_jobs,
        "on_startup": make_startup(settings),
        "on_shutdown": shutdown,
        "redis_settings": redis_settings(settings.redis_url),
        "max_jobs": settings.kb_ingest_workers,
        "queue_name": settings.jobs_queue,
        "handle_signals": True,
    }
