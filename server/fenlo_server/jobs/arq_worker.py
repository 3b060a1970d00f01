"""Background jobs on ARQ workers (`fenlo worker`) when Redis is configured:
document ingestion, and the retention cron job.

The server enqueues; any number of worker processes run the jobs. Job ids carry
the document's generation, so a document queued twice runs once. If Redis
cannot take a job, the server runs it in-process instead: a Redis outage never
loses an upload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fenlo_server.config import Settings
from fenlo_server.jobs.ingestion import Ingestor, InProcessQueue
from fenlo_server.jobs.retention import RetentionLimits, run_retention

log = logging.getLogger("fenlo.jobs")
INGEST = "ingest_document"
RETENTION = "retention"


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
                _job_id=f"ingest:{document_id}:{generation}",
                _queue_name=self._queue_name,
            )
        except Exception as error:
            log.warning(
                "redis could not take the ingestion job; running it in-process",
                extra={"document": document_id, "error": repr(error)},
            )
            self._pool = None
            await self._fallback.enqueue_ingest(workspace_id, document_id, generation)

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
            # A distinct id per sweep minute: ARQ keeps finished job ids for an hour.
            _job_id=f"ingest:{document_id}:{generation}:retry:{int(time.time() // 60)}",
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


def make_startup(settings: Settings) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def startup(ctx: dict[str, Any]) -> None:
        from fenlo_server.app import open_database
        from fenlo_server.jobs.factory import build_ingestor

        ctx["db"] = await open_database(settings)
        ctx["ingestor"] = build_ingestor(settings, ctx["db"])
        ctx["queue_name"] = settings.jobs_queue
        ctx["retention_limits"] = RetentionLimits(
            settings.retention_batch_size, settings.retention_max_batches
        )
        for workspace_id, document_id, generation in await ctx["ingestor"].outdated():
            await ctx["redis"].enqueue_job(
                INGEST,
                workspace_id,
                document_id,
                generation,
                _job_id=f"ingest:{document_id}:{generation}",
                _queue_name=settings.jobs_queue,
            )

    return startup


async def shutdown(ctx: dict[str, Any]) -> None:
    db = ctx.get("db")
    if db is not None:
        await db.dispose()


def worker_settings(settings: Settings) -> dict[str, Any]:
    from arq import cron, func

    assert settings.redis_url
    cron_jobs = [cron(sweep, second={0, 30}, run_at_startup=True)]
    schedule = retention_schedule(settings.retention_interval_seconds)
    if schedule is not None:
        # unique (ARQ's default): one worker runs each scheduled retention run.
        cron_jobs.append(cron(retention, name=RETENTION, timeout=3600, **schedule))
    return {
        "functions": [func(ingest_document, name=INGEST, max_tries=3, timeout=600)],
        "cron_jobs": cron_jobs,
        "on_startup": make_startup(settings),
        "on_shutdown": shutdown,
        "redis_settings": redis_settings(settings.redis_url),
        "max_jobs": settings.kb_ingest_workers,
        "queue_name": settings.jobs_queue,
        "handle_signals": True,
    }
