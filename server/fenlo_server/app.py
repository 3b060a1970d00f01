"""The composition root: settings -> stores -> services -> grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fenlo.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    lead_pb2,
    lead_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from fenlo_server import metrics, secrets_store
from fenlo_server.api.analytics import AnalyticsServicer
from fenlo_server.api.chat import ChatHub, ChatServicer
from fenlo_server.api.common import Deps
from fenlo_server.api.conversations import ConversationServicer
from fenlo_server.api.events import EventServicer, EventStreams
from fenlo_server.api.knowledge import KnowledgeServicer
from fenlo_server.api.leads import LeadServicer
from fenlo_server.api.webhooks import WebhookServicer
from fenlo_server.api.workspaces import WorkspaceServicer
from fenlo_server.auth.authenticator import Authenticator
from fenlo_server.auth.tokens import TokenService, load_jwks, load_private_key
from fenlo_server.config import Settings
from fenlo_server.directory import WorkspaceDirectory
from fenlo_server.events.bus import EventBus
from fenlo_server.events.relay import OutboxRelay
from fenlo_server.events.secret_box import SecretBox
from fenlo_server.events.webhooks import WebhookDispatcher
from fenlo_server.interceptors.auth import AuthInterceptor
from fenlo_server.interceptors.decoding import DecodingInterceptor
from fenlo_server.interceptors.errors import ErrorInterceptor
from fenlo_server.interceptors.observability import ObservabilityInterceptor
from fenlo_server.interceptors.ratelimit import RateLimitInterceptor
from fenlo_server.invalidation import Invalidations
from fenlo_server.jobs.arq_worker import ArqQueue
from fenlo_server.jobs.factory import build_ingestor
from fenlo_server.jobs.ingestion import InProcessQueue, JobQueue
from fenlo_server.jobs.retention import RetentionLimits, RetentionTimer
from fenlo_server.knowledge.factory import build_embedders, build_external_store, build_search
from fenlo_server.knowledge.types import Embedder
from fenlo_server.lifecycle import DataLifecycle
from fenlo_server.llm.factory import build_router
from fenlo_server.locks import ConversationLocks, LocalConversationLocks, RedisConversationLocks
from fenlo_server.pagination import PageTokens
from fenlo_server.pipeline import analysis
from fenlo_server.pipeline.analysis import guard_semantic, intent
from fenlo_server.pipeline.registry import StepRegistry
from fenlo_server.pipeline.services import TurnServices
from fenlo_server.pipeline.steps import register_builtin
from fenlo_server.ratelimit.base import RateLimiter
from fenlo_server.ratelimit.local import LocalRateLimiter
from fenlo_server.ratelimit.redis import RedisRateLimiter
from fenlo_server.ratelimit.shared import SharedRateLimiter
from fenlo_server.redis_link import RedisLink
from fenlo_server.storage import migrate
from fenlo_server.storage.db import Database
from fenlo_server.storage.knowledge import SqlKnowledgeStore

log = logging.getLogger("fenlo.server")

SERVICES = (
    workspace_pb2.DESCRIPTOR.services_by_name["WorkspaceService"].full_name,
    conversation_pb2.DESCRIPTOR.services_by_name["ConversationService"].full_name,
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"].full_name,
    event_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    lead_pb2.DESCRIPTOR.services_by_name["LeadService"].full_name,
    analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
    webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
)
# A health entry of its own, only when Redis is configured: SERVING while Redis
# answers, NOT_SERVING while the server runs on local state ("" stays SERVING).
REDIS_HEALTH = "fenlo.dependency.redis"
WEBHOOKS_CHANGED = "webhooks"  # invalidation kind: a workspace's webhooks changed
# Invalidation kind: a contact was erased or a workspace deleted; every replica drops
# the caches that may hold its texts (FenloApp.forget_texts).
DATA_ERASED = "erased"


def build_token_service(settings: Settings) -> TokenService:
    """The JWT keyring from the settings (shared by the server and the CLI)."""
    if settings.jwt_secret is not None:
        hs_secret = settings.jwt_secret.get_secret_value().encode()
    else:
        hs_secret = secrets_store.load_or_create(settings.data_dir / "jwt-hs256.secret")
    private_key = None
    if settings.jwt_private_key_file is not None:
        private_key = load_private_key(settings.jwt_private_key_file, settings.jwt_private_key_id)
    jwks = load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file is not None else []
    return TokenService(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        hs256_secret=hs_secret,
        private_key=private_key,
        jwks=jwks,
        leeway_seconds=settings.jwt_leeway_seconds,
    )


def build_secret_box(settings: Settings) -> SecretBox:
    """The key that encrypts webhook secrets (shared by the server and the worker)."""
    if settings.webhook_secret_key is not None:
        key = settings.webhook_secret_key.get_secret_value().encode()
    else:
        key = secrets_store.load_or_create(settings.data_dir / "webhook-secret.key")
    return SecretBox(key)


async def open_database(settings: Settings) -> Database:
    """Open the database and bring its schema up to date (or check that it is)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    try:
        if settings.should_auto_migrate():
            await migrate.upgrade(db)
        elif await migrate.pending(db):
            raise RuntimeError(
                "the database schema is behind this server version: run `fenlo migrate`"
            )
    except BaseException:
        await db.dispose()
        raise
    return db


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` whose Watch streams end when the server stops.

    grpc's own asyncio servicer never ends a Watch, so a single watcher (a
    client doing client-side health checking, a load balancer) held every
    shutdown for the whole grace period. Here a Watch reports NOT_SERVING
    during the grace period and ends once :meth:`end_watches` is called.
    """

    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {
            "": health_pb2.HealthCheckResponse.SERVING
        }
        self._changed = asyncio.Condition()
        self._version = 0
        self._shutting_down = False
        self._ended = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> None:
        last = None
        while True:
            version = self._version
            status = self._status.get(
                request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._ended:
                return
            await self._wait_for_change(version)

    async def _wait_for_change(self, version: int) -> None:
        async with self._changed:
            while self._version == version:
                await self._changed.wait()

    async def _update(
        self, changes: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType]
    ) -> None:
        async with self._changed:
            self._status.update(changes)
            self._version += 1
            self._changed.notify_all()

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        """Set a service's status (ignored once the graceful shutdown began)."""
        if not self._shutting_down:
            await self._update({service: status})

    async def enter_graceful_shutdown(self) -> None:
        """Permanently report every service NOT_SERVING."""
        if not self._shutting_down:
            self._shutting_down = True
            await self._update(
                dict.fromkeys(self._status, health_pb2.HealthCheckResponse.NOT_SERVING)
            )

    async def end_watches(self) -> None:
        """End every Watch stream (after it has sent the current status)."""
        self._ended = True
        await self._update({})


def redis_client(url: str) -> Any:
    """A Redis client that gives up fast: a dead Redis must not add latency."""
    import redis.asyncio

    return redis.asyncio.Redis.from_url(
        url, socket_timeout=0.25, socket_connect_timeout=0.25, health_check_interval=10
    )


class FenloApp:
    """A configured server: ``await create()``, ``await start()``, ``await stop()``."""

    def __init__(
        self, settings: Settings, db: Database, *, embedders: list[Embedder] | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.tokens = build_token_service(settings)
        if settings.page_token_secret is not None:
            page_secret = settings.page_token_secret.get_secret_value().encode()
        else:
            page_secret = secrets_store.load_or_create(settings.data_dir / "page-token.secret")
        self.redis = redis_client(settings.redis_url) if settings.redis_url else None
        self.redis_link = (
            RedisLink(
                self.redis,
                retry_min=min(0.5, settings.redis_retry_seconds),
                retry_max=settings.redis_retry_seconds,
            )
            if self.redis is not None
            else None
        )
        self.invalidations = Invalidations(self.redis_link)
        self.llm = build_router(settings, redis=self.redis)
        self.embedders = embedders if embedders is not None else build_embedders(settings)
        self.external_store = build_external_store(settings)
        self.knowledge = build_search(
            settings, SqlKnowledgeStore(db), self.embedders, self.external_store
        )
        self.ingestor = build_ingestor(settings, db, self.embedders)
        self.ingestor.on_change = self.knowledge.indexes.invalidate
        self.local_jobs = InProcessQueue(
            self.ingestor, workers=settings.kb_ingest_workers, sweep=not settings.redis_url
        )
        self.jobs: JobQueue = (
            ArqQueue(settings.redis_url, self.local_jobs, queue_name=settings.jobs_queue)
            if settings.redis_url
            else self.local_jobs
        )
        link = self.redis_link
        self.limiter: RateLimiter = LocalRateLimiter()
        self.locks: ConversationLocks = LocalConversationLocks()
        if link is not None:
            self.limiter = SharedRateLimiter(
                RedisRateLimiter(link.client, lease_seconds=settings.redis_lease_seconds),
                link,
                LocalRateLimiter(),
            )
            self.locks = RedisConversationLocks(link, LocalConversationLocks())
            indexes = self.knowledge.indexes
            self.invalidations.on("knowledge", indexes.check_soon)
            indexes.on_invalidate = lambda ws: self.invalidations.publish_soon("knowledge", ws)
        self.directory = WorkspaceDirectory(
            db, settings, redis=link, invalidations=self.invalidations
        )
        self.authenticator = Authenticator(
            self.tokens,
            db,
            settings.cache_ttl_seconds,
            redis=link,
            redis_ttl=settings.redis_cache_ttl_seconds,
            invalidations=self.invalidations,
        )
        self.steps = StepRegistry()
        register_builtin(self.steps)
        self.steps.load_entry_points()
        self.deps = Deps(
            settings=settings,
            db=db,
            page_tokens=PageTokens(page_secret),
            directory=self.directory,
            authenticator=self.authenticator,
            tokens=self.tokens,
            llm=self.llm,
            knowledge=self.knowledge,
            jobs=self.jobs,
            external_store=self.external_store,
            locks=self.locks,
            steps=self.steps,
        )
        self.turn_services = TurnServices(
            settings=settings,
            db=db,
            llm=self.llm,
            knowledge=self.knowledge,
            limiter=self.limiter,
            directory=self.directory,
        )
        # Events: committed outbox rows go to this server's bus at once and, through
        # the relay, to Redis for the other replicas (events/relay.py).
        self.bus = EventBus()
        self.relay = OutboxRelay(db, self.bus, settings, redis=self.redis)
        db.on_events_committed = self.relay.committed
        self.chat_hub = ChatHub(db)
        self.bus.subscribe("chat-hub", self.chat_hub.on_event, types=ChatHub.EVENT_TYPES)
        self.event_streams = EventStreams()
        self.lifecycle = DataLifecycle(
            db,
            hash_key=page_secret,
            live=self.chat_hub,
            external_store=self.external_store,
            external_models=[self.embedders[0].model] if self.external_store else [],
            redis=self.redis,
            event_streams=self.relay.keys,
            job_queue=settings.jobs_queue if settings.redis_url else None,
            forget=[
                self.directory.invalidate,
                self.authenticator.forget_workspace,
                self.knowledge.indexes.forget,
            ],
            forget_api_keys=self.authenticator.forget_api_keys,
            purge=[lambda workspace: self.invalidations.publish(DATA_ERASED, workspace)],
        )
        self.invalidations.on(DATA_ERASED, lambda _workspace: self.forget_texts())
        # An erasure announced while this replica was not listening is not missed.
        self.invalidations.on_reset(self.forget_texts)
        # With Redis, `fenlo worker` runs retention as an ARQ cron job instead.
        self.retention = RetentionTimer(
            db,
            0.0 if settings.redis_url else settings.retention_interval_seconds,
            RetentionLimits.from_settings(settings),
        )
        self.webhook_box = build_secret_box(settings)
        self.webhooks = WebhookDispatcher(
            db,
            settings,
            self.webhook_box,
            queue=self.jobs if isinstance(self.jobs, ArqQueue) else None,
        )
        self.bus.subscribe("webhooks", self.webhooks.on_event)
        self.invalidations.on(WEBHOOKS_CHANGED, self.webhooks.forget)
        self.health = HealthServicer()
        self.server = aio.server(
            interceptors=[
                ObservabilityInterceptor(),
                ErrorInterceptor(),
                AuthInterceptor(self.authenticator),
                RateLimitInterceptor(self.limiter, self.directory),
                DecodingInterceptor(),  # innermost: wraps the servicers themselves
            ],
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.max_send_message_length", settings.max_send_message_bytes),
                # The soft limit equal to the hard one: one answer for every size.
                ("grpc.max_metadata_size", settings.max_metadata_bytes),
                ("grpc.absolute_max_metadata_size", settings.max_metadata_bytes),
                ("grpc.keepalive_time_ms", settings.keepalive_time_seconds * 1000),
                ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_seconds * 1000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.so_reuseport", 0),
            ],
        )
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            WorkspaceServicer(self.deps, self.lifecycle), self.server
        )
        conversation_pb2_grpc.add_ConversationServiceServicer_to_server(
            ConversationServicer(self.deps, self.lifecycle), self.server
        )
        chat_pb2_grpc.add_ChatServiceServicer_to_server(
            ChatServicer(self.deps, self.chat_hub, self.steps, self.turn_services), self.server
        )
        knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(
            KnowledgeServicer(self.deps), self.server
        )
        event_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(self.deps, self.bus, self.event_streams), self.server
        )
        lead_pb2_grpc.add_LeadServiceServicer_to_server(LeadServicer(self.deps), self.server)
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(self.deps), self.server
        )
        webhook_pb2_grpc.add_WebhookServiceServicer_to_server(
            WebhookServicer(
                self.deps,
                self.webhook_box,
                on_change=lambda ws: self.invalidations.publish_soon(WEBHOOKS_CHANGED, ws),
            ),
            self.server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{settings.host}:{settings.port}"
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())]
            )
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        self.tls = settings.tls_cert_file is not None
        self.metrics_port: int | None = None
        self._metrics: metrics.MetricsEndpoint | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._warming: list[asyncio.Task[None]] = []
        self._health_updates: set[asyncio.Task[None]] = set()

    def forget_texts(self) -> None:
        """Drop the in-process caches that may hold texts of any workspace: the query
        vectors (keyed by the query's text), SQLAlchemy's compiled statements (each
        keeps the parameter values it was first compiled with), the pipelines built
        from workspace settings and the analysers' caches of passages, products and
        topics."""
        for embedder in self.embedders:
            forget = getattr(embedder, "forget_queries", None)
            if forget is not None:
                forget()
        self.db.sync_engine.clear_compiled_cache()
        self.steps.forget_pipelines()
        analysis.forget_texts()

    @classmethod
    async def create(
        cls, settings: Settings, *, embedders: list[Embedder] | None = None
    ) -> FenloApp:
        """Open the database and build the server; ``embedders`` lets tests share models."""
        db = await open_database(settings)
        try:
            return cls(settings, db, embedders=embedders)
        except BaseException:
            await db.dispose()
            raise

    async def start(self) -> None:
        await self.server.start()
        self.local_jobs.start()
        self.relay.start()
        self.retention.start()
        self.webhooks.start()
        loop = asyncio.get_running_loop()
        self._warming = [
            loop.create_task(warm()) for e in self.embedders if (warm := getattr(e, "warm", None))
        ]
        self._warming += [
            loop.create_task(layer.warm())
            for e in self.embedders
            if e.model == guard_semantic.MODEL
            for layer in (guard_semantic.shared(e), intent.shared(e))
        ]
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.redis_link is not None:
            await self.redis_link.start()
            await self.health.set(REDIS_HEALTH, _serving(self.redis_link.available))
            self.redis_link.on_change(self._redis_changed)
            self.invalidations.start()
        if self.settings.metrics_port:
            try:
                self._metrics = metrics.serve_metrics(
                    self.settings.metrics_host, self.settings.metrics_port
                )
                self.metrics_port = self._metrics.port
            except OSError as exc:
                log.warning(
                    "metrics endpoint not started",
                    extra={"port": self.settings.metrics_port, "error": str(exc)},
                )
        log.info(
            "fenlo listening",
            extra={
                "address": f"{self.settings.host}:{self.port}",
                "tls": self.tls,
                "database": self.db.engine.url.render_as_string(hide_password=True),
                "metrics_port": self.metrics_port,
            },
        )

    def stop(self, grace: float | None = None) -> asyncio.Task[None]:
        """Begin a graceful shutdown (idempotent); await the returned task to wait for it."""
        if self._stopping is None:
            grace = self.settings.shutdown_grace_seconds if grace is None else grace
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))
        return self._stopping

    async def _stop(self, grace: float) -> None:
        """Health NOT_SERVING, drain notices, wait for chats up to ``grace``, then stop."""
        started = time.monotonic()
        await self.health.enter_graceful_shutdown()
        told = self.chat_hub.drain(grace)
        event_streams = self.event_streams.drain()
        log.info(
            "shutting down",
            extra={
                "grace_seconds": grace,
                "open_chat_streams": told,
                "open_event_streams": event_streams,
            },
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.chat_hub.wait_closed(), grace)
        await self.health.end_watches()
        remaining = max(grace - (time.monotonic() - started), 0.0)
        # Chats still open after the grace period are cut at once; unary calls in
        # flight get what is left of it.
        await self.server.stop(min(remaining, 1.0) if self.chat_hub.open_sessions else remaining)
        await self.local_jobs.stop()
        await self.relay.stop()
        # Hand what the last requests committed to Redis now rather than leave it
        # to another replica's poll (bounded; whatever is left waits in the outbox).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.relay.drain(), 1.0)
        self.db.on_events_committed = None
        await self.retention.stop()
        await self.webhooks.stop()
        if isinstance(self.jobs, ArqQueue):
            await self.jobs.close()
        for task in self._warming:
            task.cancel()
        await self.authenticator.drain()
        await self.db.dispose()
        await self.invalidations.close()
        if isinstance(self.limiter, SharedRateLimiter):
            await self.limiter.drain()
        if self.redis_link is not None:
            await self.redis_link.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self._metrics is not None:
            # Release the port, so the process (or a new server in it) can bind it again.
            await asyncio.to_thread(self._metrics.close)
            self._metrics = None
        log.info("stopped", extra={"seconds": round(time.monotonic() - started, 3)})

    def _redis_changed(self, up: bool) -> None:
        task = asyncio.get_running_loop().create_task(self.health.set(REDIS_HEALTH, _serving(up)))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _serving(up: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return (
        health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
    )
