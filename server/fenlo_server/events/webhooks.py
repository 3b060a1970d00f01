"""Webhook delivery: published events become delivery rows, and deliveries become
signed HTTP POSTs, retried with exponential backoff and full jitter until they
succeed, fail for good or are dead-lettered.

The database is the queue. :meth:`WebhookDispatcher.on_event` (a bus subscriber)
writes one PENDING delivery per matching webhook, unique by (webhook, event), so
an event published twice is delivered once. The bus hands each event over once
per process, so if recording fails then (the database is away, the process is
killed), :meth:`WebhookDispatcher.catch_up` finds it: every few seconds it
matches each enabled webhook against the outbox events after its cursor
(``webhooks.event_seq``) and records what is missing, then moves the cursor.

Deliveries are sent by the in-process scheduler (the embedded default: it polls
for due deliveries, so a restart loses nothing) or, with Redis, by ARQ jobs
(``deliver_webhook``) that a worker runs; a delivery Redis cannot take is sent
in-process instead, and the worker's sweep picks up anything left behind. A
sender first takes a lease on the delivery, so two senders never send the same
attempt. Sending never runs inside a chat turn: the bus handler only writes
rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy.exc import IntegrityError

from fenlo_server import names
from fenlo_server.config import Settings
from fenlo_server.events import url_policy
from fenlo_server.events.bus import PublishedEvent
from fenlo_server.events.relay import published
from fenlo_server.events.secret_box import SecretBox
from fenlo_server.events.signing import signature
from fenlo_server.storage import outbox
from fenlo_server.storage.db import Database
from fenlo_server.storage.models import WebhookDeliveryRow, utcnow
from fenlo_server.storage.webhooks import (
    DEAD_LETTER,
    FAILED,
    PENDING,
    SUCCEEDED,
    WebhookRepository,
    due_deliveries,
    lagging_webhooks,
    subscribes,
)

log = logging.getLogger("fenlo.webhooks")
# A cookie jar that keeps nothing (webhook receivers' Set-Cookie is ignored).
NO_COOKIES = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
USER_AGENT = "Fenlo-Webhooks/1"
_ERROR_CHARS = 500


class DeliveryQueue(Protocol):
    """Where deliveries go when they are sent by workers (ARQ)."""

    async def enqueue_delivery(
        self, workspace_id: str, delivery_id: str, attempt: int, when: datetime
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt gave."""

    status_code: int
    error: str
    permanent: bool  # retrying cannot help


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_body(event: PublishedEvent) -> str:
    """The JSON body every delivery of ``event`` sends, byte for byte."""
    created = event.create_time or utcnow()
    return json.dumps(
        {
            "id": event.id,
            "seq": event.seq,
            "type": event.type,
            "workspace": names.workspace(event.workspace_id),
            "create_time": rfc3339(created),
            "payload": event.payload,
        },
        separators=(",", ":"),
        default=str,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """The wait after failed attempt ``attempt`` (from 1): full jitter, uniform in
    [0, min(cap, base * 2^(attempt - 1))]."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    return random.uniform(0, ceiling)


# Events waiting for the recorder task; beyond it, publishers record them themselves.
INBOX_CAPACITY = 10_000
NONE_CACHE_LIMIT = 100_000  # workspaces remembered as having no webhook
# The catch-up leaves events this young to the bus's recorder (no race with it).
CATCH_UP_SETTLE_SECONDS = 2.0
CATCH_UP_BATCH = 500


class WebhookDispatcher:
    """Turns events into deliveries and deliveries into requests."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        box: SecretBox,
        *,
        queue: DeliveryQueue | None = None,
        scheduler: bool = True,
    ) -> None:
        self._db = db
        self._settings = settings
        self._box = box
        self._queue = queue
        self._scheduler = scheduler and queue is None
        self._lease = timedelta(seconds=settings.webhook_timeout_seconds * 2 + 5)
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Events wait here for the recorder task, so that publishing an event (on the
        # commit of a chat turn) never waits for the webhooks' database work.
        self._inbox: asyncio.Queue[PublishedEvent] = asyncio.Queue(INBOX_CAPACITY)
        self._recorder: asyncio.Task[None] | None = None
        self._catch_up_task: asyncio.Task[None] | None = None
        # Workspaces known to have no enabled webhook, until a monotonic time: most
        # have none, and then an event costs no database work. A webhook made or
        # changed calls forget() (on every replica); an event missed meanwhile is
        # still matched from the outbox by the catch-up.
        self._none_until: dict[str, float] = {}

    def forget(self, workspace_id: str) -> None:
        """The workspace's webhooks changed: look them up again at its next event."""
        self._none_until.pop(workspace_id, None)

    def _known_none(self, workspace_id: str) -> bool:
        until = self._none_until.get(workspace_id)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._none_until[workspace_id]
        return False

    def _note_none(self, workspace_id: str) -> None:
        if len(self._none_until) >= NONE_CACHE_LIMIT:
            self._none_until.clear()
        self._none_until[workspace_id] = time.monotonic() + self._settings.cache_ttl_seconds

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._recorder is None:
            self._recorder = loop.create_task(self._record_events(), name="webhook-recorder")
        if self._catch_up_task is None:
            self._catch_up_task = loop.create_task(self._catch_up_loop(), name="webhook-catch-up")
        if self._scheduler and self._loop_task is None:
            self._loop_task = loop.create_task(self._run())

    async def stop(self, grace: float = 1.0) -> None:
        """Stop looking for deliveries; give attempts in flight ``grace`` seconds to
        finish (one cut short is made again once its lease runs out)."""
        if self._recorder is not None:
            # Record what was published before the stop (bounded by ``grace``).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox.join(), grace)
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
            self._recorder = None
        self._stopping = True
        self._wake.set()
        if self._catch_up_task is not None:
            self._catch_up_task.cancel()
            await asyncio.gather(self._catch_up_task, return_exceptions=True)
            self._catch_up_task = None
        tasks = list(self._in_flight.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
            self._loop_task = None
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._settings.webhook_timeout_seconds),
                follow_redirects=False,
                trust_env=False,
                # No kept-alive connections: requests are pinned to an IP address,
                # and a pooled TLS connection to that address may have been opened
                # (and its certificate checked) for another host name.
                limits=httpx.Limits(
                    max_connections=self._settings.webhook_concurrency,
                    max_keepalive_connections=0,
                ),
                # One client sends every workspace's deliveries: a cookie one
                # receiver sets must never go out with another workspace's request.
                cookies=NO_COOKIES,
            )
        return self._client

    # ------------------------------------------------------------ events -> deliveries

    async def on_event(self, event: PublishedEvent) -> None:
        """Bus subscriber: hand ``event`` to the recorder task (at once), or record it
        here when none runs or its queue is full."""
        if self._recorder is not None and not self._recorder.done():
            try:
                self._inbox.put_nowait(event)
                return
            except asyncio.QueueFull:
                pass  # push back on the publisher rather than drop the event
        await self.record(event)

    async def _record_events(self) -> None:
        while True:
            # Handled in a frame of its own: this loop, waiting for the next event,
            # keeps none (an erased one would stay in memory until the next came).
            await self._record_next(await self._inbox.get())

    async def _record_next(self, event: PublishedEvent) -> None:
        try:
            await self.record(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "webhook deliveries not recorded",
                extra={"event_id": event.id, "workspace": event.workspace_id},
            )
        finally:
            self._inbox.task_done()

    async def record(self, event: PublishedEvent) -> None:
        """A delivery of ``event`` for each matching enabled webhook."""
        if self._known_none(event.workspace_id):
            return
        body = event_body(event)
        created: list[WebhookDeliveryRow] = []
        for attempt in range(2):
            try:
                async with self._db.workspace(event.workspace_id) as session:
                    repo = WebhookRepository(session)
                    enabled = await repo.enabled()
                    if not enabled:
                        self._note_none(event.workspace_id)
                        return
                    hooks = [h for h in enabled if subscribes(h, event.type)]
                    created = await repo.add_deliveries(
                        [h.id for h in hooks],
                        event_id=event.id,
                        event_seq=event.seq,
                        event_type=event.type,
                        body=body,
                    )
                break
            except IntegrityError:
                # Another replica wrote the same delivery at the same moment (the
                # unique key refused ours): look again once.
                if attempt == 1:
                    raise
        if not created:
            return
        log.info(
            "webhook deliveries created",
            extra={
                "workspace": event.workspace_id,
                "event_id": event.id,
                "type": event.type,
                "deliveries": len(created),
            },
        )
        for row in created:
            await self._schedule(event.workspace_id, row.id, 0, utcnow())

    # ------------------------------------------------------------ catching up from the outbox

    async def _catch_up_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._settings.webhook_catchup_seconds)
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database is away: next time
                log.warning("webhook catch-up failed", extra={"error": repr(error)[:300]})

    async def catch_up(self, *, settle: float = CATCH_UP_SETTLE_SECONDS) -> int:
        """Record the deliveries of outbox events older than ``settle`` seconds that
        enabled webhooks have not been matched against; return how many were made."""
        async with self._db.unscoped("webhook catch-up finds webhooks behind the outbox") as s:
            hooks = await lagging_webhooks(s, 1000)
        by_workspace: dict[str, list[tuple[str, int, list[str]]]] = {}
        for hook in hooks:
            by_workspace.setdefault(hook.workspace_id, []).append(
                (hook.id, int(hook.event_seq), list(hook.event_types or []))
            )
        made = 0
        for workspace_id, cursors in by_workspace.items():
            try:
                made += await self._catch_up_workspace(workspace_id, cursors, settle)
            except IntegrityError:
                # The recorder wrote one of them at the same moment: the next pass.
                continue
        return made

    async def _catch_up_workspace(
        self, workspace_id: str, cursors: list[tuple[str, int, list[str]]], settle: float
    ) -> int:
        young = utcnow() - timedelta(seconds=settle)
        async with self._db.workspace(workspace_id) as session:
            rows = await outbox.events_after(
                session, min(seq for _, seq, _ in cursors), CATCH_UP_BATCH
            )
            # In sequence order up to the first event too young to judge.
            settled = []
            for row in rows:
                if _aware(row.create_time) > young:
                    break
                settled.append(row)
            if not settled:
                return 0
            repo = WebhookRepository(session)
            hook_ids = [hook_id for hook_id, _, _ in cursors]
            have = await repo.recorded(hook_ids, [r.id for r in settled])
            created: list[WebhookDeliveryRow] = []
            for row in settled:
                wanted = [
                    hook_id
                    for hook_id, seq, types in cursors
                    if row.seq > seq
                    and (not types or row.type in types)
                    and (hook_id, row.id) not in have
                ]
                if wanted:
                    created += await repo.add_pending(
                        wanted,
                        event_id=row.id,
                        event_seq=int(row.seq),
                        event_type=row.type,
                        body=event_body(published(row)),
                    )
            await repo.advance(hook_ids, int(settled[-1].seq))
        if created:
            log.info(
                "webhook deliveries caught up from the outbox",
                extra={"workspace": workspace_id, "deliveries": len(created)},
            )
        for delivery in created:
            await self._schedule(workspace_id, delivery.id, 0, utcnow())
        return len(created)

    async def _schedule(
        self, workspace_id: str, delivery_id: str, attempt: int, when: datetime
    ) -> None:
        if self._queue is not None:
            try:
                await self._queue.enqueue_delivery(workspace_id, delivery_id, attempt, when)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "redis could not take the webhook delivery; sending it in-process",
                    extra={"delivery": delivery_id, "error": repr(error)},
                )
            if when <= utcnow():
                self._spawn(workspace_id, delivery_id)
            # A later retry waits in the database for the worker's sweep.
            return
        self._wake.set()

    # ------------------------------------------------------------ the in-process scheduler

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook scheduler: looking for due deliveries failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.webhook_poll_seconds)

    async def due(self, *, older_than: float = 0.0, limit: int = 100) -> list[tuple[str, str]]:
        """(workspace id, delivery id) of deliveries due ``older_than`` seconds ago."""
        when = utcnow() - timedelta(seconds=older_than)
        async with self._db.unscoped("webhook scheduler finds due deliveries") as session:
            return await due_deliveries(session, when, limit)

    async def run_due(self) -> int:
        """Start sending every due delivery (bounded); return how many were started."""
        free = self._settings.webhook_concurrency * 2 - len(self._in_flight)
        if free <= 0:
            return 0
        started = 0
        for workspace_id, delivery_id in await self.due(limit=free + len(self._in_flight)):
            if delivery_id in self._in_flight:
                continue
            self._spawn(workspace_id, delivery_id)
            started += 1
        return started

    def _spawn(self, workspace_id: str, delivery_id: str) -> None:
        if delivery_id in self._in_flight or self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._guarded(workspace_id, delivery_id))
        self._in_flight[delivery_id] = task
        task.add_done_callback(lambda _: self._in_flight.pop(delivery_id, None))

    async def _guarded(self, workspace_id: str, delivery_id: str) -> None:
        async with self._slots:
            try:
                await self.deliver(workspace_id, delivery_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "webhook delivery failed unexpectedly; it will be retried",
                    extra={"workspace": workspace_id, "delivery": delivery_id},
                )

    # ------------------------------------------------------------ one attempt

    async def deliver(self, workspace_id: str, delivery_id: str) -> str:
        """Make one attempt of a due delivery; return its state afterwards (or
        ``skipped`` when it was not due, held by another sender or gone)."""
        now = utcnow()
        async with self._db.workspace(workspace_id) as session:
            repo = WebhookRepository(session)
            if not await repo.claim(delivery_id, now, self._lease):
                return "skipped"
            row = await repo.get_delivery(delivery_id)
            hook = await repo.get(row.webhook_id) if row is not None else None
            if row is None or hook is None:
                return "skipped"
            if not hook.enabled:
                await repo.release(delivery_id)
                return "disabled"
        attempt = row.attempt_count + 1
        started = utcnow()
        clock = time.perf_counter()
        try:
            secret = self._box.decrypt(hook.secret_ciphertext, hook.id)
        except Exception:
            # The key changed (FENLO_WEBHOOK_SECRET_KEY, or a lost data directory):
            # no retry can sign this request.
            outcome = Outcome(
                0, "the webhook's secret cannot be decrypted with the configured key", True
            )
        else:
            outcome = await self._send(hook.id, hook.url, row, secret, started)
        duration_ms = round((time.perf_counter() - clock) * 1000, 1)
        next_time: datetime | None = None
        if 200 <= outcome.status_code < 300:
            state = SUCCEEDED
        elif outcome.permanent:
            state = FAILED
        elif attempt >= self._settings.webhook_max_attempts:
            state = DEAD_LETTER
        else:
            state = PENDING
            delay = backoff_seconds(
                attempt,
                self._settings.webhook_retry_base_seconds,
                self._settings.webhook_retry_max_seconds,
            )
            next_time = utcnow() + timedelta(seconds=delay)
        record: dict[str, Any] = {
            "attempt": attempt,
            "start_time": rfc3339(started),
            "duration_ms": duration_ms,
            "status_code": outcome.status_code,
            "error": outcome.error,
        }
        disable = (
            outcome.status_code == 410
            and self._settings.webhook_disable_on_gone
            and state == FAILED
        )
        async with self._db.workspace(workspace_id) as session:
            repo = WebhookRepository(session)
            current = await repo.get_delivery(delivery_id)
            if current is None:  # the webhook was deleted meanwhile
                return "skipped"
            await repo.record_attempt(current, record, state=state, next_attempt_time=next_time)
            if disable:
                current_hook = await repo.get(hook.id)
                if current_hook is not None and current_hook.enabled:
                    current_hook.enabled = False
                    current_hook.disabled_reason = "the endpoint answered 410 Gone"
                    await repo.save(current_hook)
        log.info(
            "webhook delivery attempt",
            extra={
                "workspace": workspace_id,
                "webhook": hook.id,
                "delivery": delivery_id,
                "event_id": row.event_id,
                "event_type": row.event_type,
                "attempt": attempt,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "state": state,
                "duration_ms": duration_ms,
                "next_attempt_time": rfc3339(next_time) if next_time else None,
                "webhook_disabled": disable,
            },
        )
        if state == PENDING and next_time is not None:
            await self._schedule(workspace_id, delivery_id, attempt, next_time)
        return state

    async def _send(
        self, webhook_id: str, url: str, row: WebhookDeliveryRow, secret: str, started: datetime
    ) -> Outcome:
        try:
            target = await url_policy.check(url, allow_private=self._settings.webhook_allow_private)
        except url_policy.UrlRefused as refused:
            return Outcome(0, f"url refused: {refused}", permanent=True)
        timestamp = int(started.timestamp())
        body = row.body.encode()
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Fenlo-Webhook-Id": webhook_id,
            "Fenlo-Event-Id": row.event_id,
            "Fenlo-Timestamp": str(timestamp),
            "Fenlo-Signature": signature(secret, timestamp, body),
        }
        extensions = {"sni_hostname": target.tls_hostname} if target.tls_hostname else None
        try:
            async with self._http().stream(
                "POST", target.url, content=body, headers=headers, extensions=extensions
            ) as response:
                status = response.status_code
                snippet = b""
                if not 200 <= status < 300:
                    async for chunk in response.aiter_bytes():
                        snippet += chunk
                        if len(snippet) >= 200:
                            break
        except httpx.TimeoutException:
            return Outcome(0, f"timed out after {self._settings.webhook_timeout_seconds:g}s", False)
        except httpx.HTTPError as error:
            return Outcome(0, f"{type(error).__name__}: {error}"[:_ERROR_CHARS], False)
        if 200 <= status < 300:
            return Outcome(status, "", False)
        text = snippet[:200].decode("utf-8", "replace").strip()
        error_text = f"HTTP {status}" + (f": {text}" if text else "")
        return Outcome(status, error_text[:_ERROR_CHARS], permanent=status == 410)
