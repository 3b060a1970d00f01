"""Retention: removes what is older than each workspace's ``retention_days``.

One run visits every workspace whose settings keep data for a limited time
and, in that workspace's own sessions, deletes in batches (each batch its own
short transaction): messages created before the cutoff, then conversations
created and last changed before it that have no message left (with their
leads), then outbox events and webhook deliveries created before it. Finished
webhook deliveries (succeeded, failed, dead-lettered) of every workspace go
after ``FENLO_WEBHOOK_DELIVERY_RETENTION_DAYS`` as well. Each kind stops after
``max_batches`` batches per workspace and run, so one run is bounded; what is
left goes in the next run. Deleting is idempotent, so two runs at once (two
replicas without Redis) do no harm.

``fenlo serve`` runs it on a timer when Redis is not configured; with Redis,
``fenlo worker`` runs it as an ARQ cron job; ``fenlo retention run`` runs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server.config import Settings
from fenlo_server.storage.db import Database
from fenlo_server.storage.lifecycle import (
    Pruned,
    prune_conversations,
    prune_events,
    prune_messages,
)
from fenlo_server.storage.models import WorkspaceRow, utcnow
from fenlo_server.storage.webhooks import prune_deliveries, workspaces_with_deliveries_before

log = logging.getLogger("fenlo.retention")
WORKSPACE_PAGE = 500


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    batch_size: int = 500
    max_batches: int = 20
    # Finished webhook deliveries older than this go in every workspace; 0 keeps them.
    delivery_days: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionLimits:
        return cls(
            settings.retention_batch_size,
            settings.retention_max_batches,
            settings.webhook_delivery_retention_days,
        )


def retention_days(settings: dict[str, object] | None) -> int:
    """The workspace's retention in days from its stored settings; 0 keeps forever."""
    value = (settings or {}).get("retention_days", 0)
    return value if isinstance(value, int) and value > 0 else 0


async def _batches(
    db: Database,
    workspace_id: str,
    step: Callable[[AsyncSession, int], Awaitable[int]],
    limits: RetentionLimits,
) -> tuple[int, bool]:
    """Run ``step`` in batches until it deletes less than a batch; (total, done)."""
    total = 0
    for _ in range(limits.max_batches):
        async with db.workspace(workspace_id) as session:
            count = await step(session, limits.batch_size)
        total += count
        if count < limits.batch_size:
            return total, True
    return total, False


async def prune_workspace(
    db: Database,
    workspace_id: str,
    days: int,
    *,
    limits: RetentionLimits = RetentionLimits(),
    now: datetime | None = None,
) -> Pruned:
    """One bounded retention pass over one workspace; ``days`` 0 deletes nothing."""
    if days <= 0:
        return Pruned()
    cutoff = (now or utcnow()) - timedelta(days=days)
    messages, messages_done = await _batches(
        db, workspace_id, lambda s, n: prune_messages(s, cutoff, n), limits
    )
    leads = 0

    async def conversations(session: AsyncSession, limit: int) -> int:
        nonlocal leads
        removed, lead_count = await prune_conversations(session, cutoff, limit)
        leads += lead_count
        return removed

    removed, conversations_done = await _batches(db, workspace_id, conversations, limits)
    events, events_done = await _batches(
        db, workspace_id, lambda s, n: prune_events(s, cutoff, n), limits
    )
    deliveries, deliveries_done = await _batches(
        db,
        workspace_id,
        lambda s, n: prune_deliveries(s, cutoff, n, finished_only=False),
        limits,
    )
    return Pruned(
        messages=messages,
        conversations=removed,
        leads=leads,
        events=events,
        deliveries=deliveries,
        done=messages_done and conversations_done and events_done and deliveries_done,
    )


async def prune_finished_deliveries(
    db: Database,
    days: int,
    *,
    limits: RetentionLimits = RetentionLimits(),
    workspace_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Pruned]:
    """Remove the finished webhook deliveries older than ``days`` of every workspace
    (or only ``workspace_id``); 0 removes nothing."""
    if days <= 0:
        return {}
    cutoff = (now or utcnow()) - timedelta(days=days)
    if workspace_id is not None:
        workspaces = [workspace_id]
    else:
        async with db.unscoped("retention finds old webhook deliveries") as session:
            workspaces = await workspaces_with_deliveries_before(session, cutoff, WORKSPACE_PAGE)
    results: dict[str, Pruned] = {}
    for workspace in workspaces:
        count, done = await _batches(
            db, workspace, lambda s, n: prune_deliveries(s, cutoff, n, finished_only=True), limits
        )
        results[workspace] = Pruned(deliveries=count, done=done)
    return results


async def _workspaces(db: Database, only: str | None) -> list[tuple[str, int]]:
    """(id, retention days) of the workspaces that limit retention."""
    found: list[tuple[str, int]] = []
    after = ""
    while True:
        async with db.unscoped("retention lists the workspaces' retention") as session:
            query = select(WorkspaceRow.id, WorkspaceRow.settings).order_by(WorkspaceRow.id)
            if only is not None:
                query = query.where(WorkspaceRow.id == only)
            rows = (
                await session.execute(query.where(WorkspaceRow.id > after).limit(WORKSPACE_PAGE))
            ).all()
        found += [(id_, days) for id_, settings in rows if (days := retention_days(settings))]
        if len(rows) < WORKSPACE_PAGE:
            return found
        after = rows[-1][0]


async def run_retention(
    db: Database,
    *,
    limits: RetentionLimits = RetentionLimits(),
    workspace_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Pruned]:
    """One run over every workspace (or only ``workspace_id``) that limits retention,
    then the finished webhook deliveries of every workspace; what each lost. A
    workspace that fails is logged and skipped."""
    results: dict[str, Pruned] = {}
    for workspace, days in await _workspaces(db, workspace_id):
        try:
            pruned = await prune_workspace(db, workspace, days, limits=limits, now=now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention failed for a workspace", extra={"workspace": workspace})
            continue
        results[workspace] = pruned
        if pruned.messages or pruned.conversations or pruned.events:
            log.info(
                "retention removed old data",
                extra={
                    "workspace": workspace,
                    "retention_days": days,
                    "messages": pruned.messages,
                    "conversations": pruned.conversations,
                    "leads": pruned.leads,
                    "events": pruned.events,
                    "deliveries": pruned.deliveries,
                    "done": pruned.done,
                },
            )
    try:
        old = await prune_finished_deliveries(
            db, limits.delivery_days, limits=limits, workspace_id=workspace_id, now=now
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("retention of webhook deliveries failed")
        old = {}
    for workspace, pruned in old.items():
        results.setdefault(workspace, Pruned()).add(pruned)
        if pruned.deliveries:
            log.info(
                "retention removed old webhook deliveries",
                extra={"workspace": workspace, "deliveries": pruned.deliveries},
            )
    return results


class RetentionTimer:
    """Runs retention in-process every ``interval`` seconds (the first run after
    ``min(interval, 60)`` seconds, so a server that restarts often still runs it)."""

    def __init__(self, db: Database, interval: float, limits: RetentionLimits) -> None:
        self._db = db
        self._interval = interval
        self._limits = limits
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        await asyncio.sleep(min(self._interval, 60.0))
        while True:
            try:
                await run_retention(self._db, limits=self._limits)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention run failed; trying again at the next interval")
            self.runs += 1
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
