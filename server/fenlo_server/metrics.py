"""Prometheus metrics, served on FENLO_METRICS_PORT."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RPC_TOTAL = Counter(
    "fenlo_rpc_total",
    "RPCs handled, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "fenlo_rpc_duration_seconds",
    "RPC duration (for streams: the whole stream), by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "fenlo_rate_limited_total",
    "Requests refused by a rate or concurrency limit.",
    ["limit"],
    registry=REGISTRY,
)
OPEN_CHAT_STREAMS = Gauge(
    "fenlo_open_chat_streams", "Chat streams open on this server.", registry=REGISTRY
)


class MetricsEndpoint:
    """The metrics HTTP endpoint, served by a daemon thread until :meth:`close`."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        """Stop serving and release the port (blocks up to the server's poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(host: str, port: int) -> MetricsEndpoint:
    """Start the metrics HTTP endpoint in a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    return MetricsEndpoint(server, thread)


LLM_CALLS = Counter(
    "fenlo_llm_calls_total",
    "LLM provider calls by outcome (ok, a failure kind, request_error, cancelled).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
LLM_FAILOVERS = Counter(
    "fenlo_llm_failovers_total",
    "Answers that moved from one provider to the next, and whether text was already sent.",
    ["from_provider", "to_provider", "mid_stream"],
    registry=REGISTRY,
)
LLM_BREAKER_STATE = Gauge(
    "fenlo_llm_breaker_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
    ["provider"],
    registry=REGISTRY,
)
LLM_FIRST_TOKEN_SECONDS = Histogram(
    "fenlo_llm_first_token_seconds",
    "Time from calling a provider to its first text.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
    registry=REGISTRY,
)
REDIS_AVAILABLE = Gauge(
    "fenlo_redis_available",
    "1 while Redis answers (or is not configured), 0 while the server runs on local state.",
    registry=REGISTRY,
)
REDIS_AVAILABLE.set(1)
INGESTED_CHUNKS = Counter(
    "fenlo_ingested_chunks_total", "Passages written by document ingestion.", registry=REGISTRY
)
EVENTS_PUBLISHED = Counter(
    "fenlo_events_published_total",
    "Outbox events handed on: to this server's bus from its own outbox (local) or from "
    "other replicas through Redis (remote), and written to Redis (redis).",
    ["target"],
    registry=REGISTRY,
)
EVENTS_REDIS_FAILURES = Counter(
    "fenlo_events_redis_failures_total",
    "Times the outbox relay could not reach Redis (events then wait in the outbox).",
    registry=REGISTRY,
)
EVENT_STREAMS = Gauge(
    "fenlo_open_event_streams", "StreamEvents calls open on this server.", registry=REGISTRY
)
EVENT_STREAM_CATCH_UPS = Counter(
    "fenlo_event_stream_catch_ups_total",
    "Times a StreamEvents call read missed or overflowed live events from the outbox.",
    ["cause"],
    registry=REGISTRY,
)
DEPENDENCY_UP = Gauge(
    "fenlo_dependency_up",
    "1 while an optional dependency answers, 0 while the server runs without it "
    "(only dependencies that are configured appear).",
    ["dependency"],
    registry=REGISTRY,
)
DEPENDENCY_FALLBACKS = Counter(
    "fenlo_dependency_fallbacks_total",
    "Operations that used this server's local state because a dependency was down or failed.",
    ["dependency", "component"],
    registry=REGISTRY,
)
