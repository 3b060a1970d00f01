"""Micro-benchmarks of the hot paths, each repeated and reported as medians.

``python -m fenlo_server.bench.micro [--full]`` prints one JSON object. The
measures, all in one run:

Vector search (``vector_*``, ``numpy_*``, ``ann_recall_*``)
    The in-process vector index the server uses by default
    (:class:`~fenlo_server.knowledge.vector_index.VectorIndex`, built the way
    the server builds it, with its default ``kb_ann_threshold``: exact search
    below it, usearch HNSW above) at 10k and 100k passages, query embedding
    excluded, next to brute-force numpy over the same vectors (matrix @
    query, ``argpartition`` top 10, sorted), with recall@10 of the index
    against that brute force. The vectors are synthetic 384-dimensional unit
    vectors drawn from a mixture of gaussians: :data:`CENTRES` random unit
    centres, each vector a centre plus isotropic noise of norm about
    :data:`SPREAD`, normalised (neighbour cosines of about 0.75, like
    passages of one knowledge base under MiniLM); queries are drawn the same
    way. Uniformly random vectors are the worst case for HNSW (no
    neighbourhood structure, every vector nearly orthogonal to every other;
    recall@10 there is about 0.3 with these parameters) and are unlike real
    embeddings.

Query embedding (``query_embed_p50_ms``)
    One short question through the default local embedder (MiniLM int8 on
    onnxruntime), its query cache cleared before every run.

Ingestion (``ingest_chunks_per_s``)
    A markdown document through the real ingestion path with the production
    default embedders (MiniLM and multilingual USE): parse, chunk, embed,
    store the passages in SQLite (a temporary directory), then load the
    workspace's search index from the database; passages per second of the
    whole, models loaded beforehand.

Failover (``failover_first_token_ms``)
    The router as the server builds it, Groq primary (the ``groq`` SDK, as
    configured by the server) pointed at a local server answering HTTP 500,
    OpenAI secondary (the ``openai`` SDK) at a healthy one: from the moment
    the failing server has written its 500 to the secondary's first token out
    of the router. ``failover_drop_first_token_ms``: the same with the
    primary dropping the connection. Each repeat gets fresh breakers (else the
    primary's breaker opens and skips it); the SDK clients are reused.

Router overhead (``router_*``, ``bare_*``)
    The router with the real ``openai`` SDK against a local streaming server
    in its own process (50 chunks a reply, no delay), next to the bare SDK
    (``AsyncOpenAI(...).chat.completions.create(stream=True)``, one client
    reused) against the same server, interleaved: time to first token and
    ``time.process_time()`` per full reply (the server's CPU is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fenlo_server.bench.openai_server import LocalOpenAIServer, Mode
from fenlo_server.config import Settings
from fenlo_server.knowledge.types import Matrix, Vector

DIMENSIONS = 384
CENTRES = 300
SPREAD = 0.6
K = 10
QUESTION = "How late is the pharmacy open on Sundays?"


KEYS = (
    "vector_p50_ms_10k",
    "vector_p99_ms_10k",
    "numpy_p50_ms_10k",
    "numpy_p99_ms_10k",
    "vector_p50_ms_100k",
    "vector_p99_ms_100k",
    "numpy_p50_ms_100k",
    "numpy_p99_ms_100k",
    "ann_recall_at_10",
    "ann_recall_at_10_10k",
    "query_embed_p50_ms",
    "ingest_chunks_per_s",
    "failover_first_token_ms",
    "router_ttft_p50_ms",
    "bare_ttft_p50_ms",
    "router_added_ttft_p50_ms",
    "router_cpu_ms_per_reply",
    "bare_cpu_ms_per_reply",
    "router_cpu_ratio",
)  # what run_micro always reports (and a few more)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each measure to run. ``vector_sizes`` pairs the label of the
    keys (the last one also gives ``ann_recall_at_10``) with the passages to index;
    ``ann_threshold`` None is the server's default."""

    vector_sizes: tuple[tuple[str, int], ...] = (("10k", 10_000), ("100k", 100_000))
    ann_threshold: int | None = None
    queries: int = 200
    embed_repeats: int = 30
    ingest_repeats: int = 3
    ingest_paragraphs: int = 24
    failover_repeats: int = 20
    replies: int = 100
    warmup_replies: int = 10


QUICK = Plan()
FULL = Plan(
    queries=1000,
    embed_repeats=200,
    ingest_repeats=5,
    ingest_paragraphs=80,
    failover_repeats=100,
    replies=500,
    warmup_replies=30,
)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _p(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def _settings(**values: Any) -> Settings:
    """The server's defaults (environment ignored where it would matter)."""
    values.setdefault("pinecone_api_key", None)
    return Settings(**values)


# -- vector search -----------------------------------------------------------------


def clustered_vectors(n: int, *, seed: int = 0, dimensions: int = DIMENSIONS) -> Matrix:
    """``n`` unit vectors around :data:`CENTRES` random centres (see the module doc)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dimensions)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, CENTRES, n)
    noise = rng.standard_normal((n, dimensions)).astype(np.float32)
    vectors = centres[labels] + noise * np.float32(SPREAD / np.sqrt(dimensions))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def brute_force_top(matrix: Matrix, query: Vector, k: int = K) -> list[int]:
    """The ``k`` best rows by inner product, best first (the numpy baseline)."""
    scores = matrix @ query
    top = np.argpartition(-scores, k - 1)[:k]
    return [int(i) for i in top[np.argsort(-scores[top])]]


async def bench_vectors(
    size: int, queries: int, *, ann_threshold: int | None = None, seed: int = 0
) -> dict[str, float]:
    """p50/p99 ms of the index and of numpy, and the index's recall@10."""
    from fenlo_server.knowledge.vector_index import build_in_thread

    threshold = ann_threshold if ann_threshold is not None else _settings().kb_ann_threshold
    data = await asyncio.to_thread(clustered_vectors, size + queries, seed=seed)
    matrix, asked = data[:size], data[size:]
    index = await build_in_thread(matrix, threshold)
    await asyncio.to_thread(index.wait_ready)
    for query in asked[:5]:  # warm caches and code paths
        index.search(query, K)
        brute_force_top(matrix, query)
    store_times: list[float] = []
    numpy_times: list[float] = []
    recalls: list[float] = []
    for query in asked:
        start = time.perf_counter()
        hits = index.search(query, K)
        store_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        exact = brute_force_top(matrix, query)
        numpy_times.append(time.perf_counter() - start)
        recalls.append(len({h[0] for h in hits} & set(exact)) / K)
    return {
        "vector_p50_ms": _ms(_p(store_times, 50)),
        "vector_p99_ms": _ms(_p(store_times, 99)),
        "numpy_p50_ms": _ms(_p(numpy_times, 50)),
        "numpy_p99_ms": _ms(_p(numpy_times, 99)),
        "ann_recall_at_10": float(np.mean(recalls)),
        "approximate": float(index.approximate),
    }


# -- embeddings and ingestion ------------------------------------------------------------


async def bench_query_embedding(repeats: int) -> dict[str, float]:
    from fenlo_server.knowledge.embedders import MiniLmEmbedder

    embedder = MiniLmEmbedder()
    try:
        await embedder.warm()
        times: list[float] = []
        for _ in range(repeats):
            embedder.cache.clear()
            start = time.perf_counter()
            vector = await embedder.embed_query(QUESTION)
            times.append(time.perf_counter() - start)
        assert vector.shape == (embedder.dimensions,)
        return {"query_embed_p50_ms": _ms(statistics.median(times))}
    finally:
        embedder.close()


WORDS = (
    "the store opens early on weekdays and customers may collect orders at the front desk "
    "returns are accepted within thirty days with a receipt refunds go back to the card "
    "parking is free in the garage for two hours bring the ticket to the counter pets are "
    "welcome on a leash except in the pharmacy delivery takes three working days and costs "
    "five euros below fifty euros gift cards never expire and cannot be exchanged for cash"
).split()


def synthetic_document(paragraphs: int, seed: int = 0) -> str:
    """Markdown with a heading every four paragraphs of about 90 words."""
    rng = np.random.default_rng(seed)
    parts: list[str] = []
    for i in range(paragraphs):
        if i % 4 == 0:
            parts.append(f"## Topic {i // 4 + 1}: {' '.join(rng.choice(WORDS, 3))}")
        sentences = [
            " ".join(rng.choice(WORDS, int(rng.integers(8, 16)))).capitalize() + "."
            for _ in range(7)
        ]
        parts.append(" ".join(sentences))
    return "# Customer guide\n\n" + "\n\n".join(parts) + "\n"


async def bench_ingestion(
    repeats: int, paragraphs: int, embedders: list[Any] | None = None
) -> dict[str, float]:
    """Passages per second through parse, chunk, embed, store and index load."""
    from fenlo_server.jobs.factory import build_ingestor
    from fenlo_server.knowledge.factory import build_embedders
    from fenlo_server.knowledge.index import IndexManager
    from fenlo_server.storage import migrate
    from fenlo_server.storage.db import Database
    from fenlo_server.storage.knowledge import DocumentRepository, SqlKnowledgeStore
    from fenlo_server.storage.repositories import WorkspaceStore

    with tempfile.TemporaryDirectory(prefix="fenlo-bench-") as tmp:
        settings = _settings(
            data_dir=Path(tmp), database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        )
        own = embedders is None
        models = embedders if embedders is not None else build_embedders(settings)
        db = Database(settings.resolved_database_url())
        try:
            await migrate.upgrade(db)
            for embedder in models:
                warm = getattr(embedder, "warm", None)
                if warm is not None:
                    await warm()
            ingestor = build_ingestor(settings, db, models)
            rates: list[float] = []
            chunks = 0
            for repeat in range(repeats + 1):  # the first is a warm-up
                content = synthetic_document(paragraphs, seed=repeat).encode()
                async with db.unscoped("benchmark workspace") as session:
                    workspace = await WorkspaceStore(session).create(
                        display_name=f"bench {repeat}", settings={}, quotas={}
                    )
                async with db.workspace(workspace.id) as session:
                    row = await DocumentRepository(session).create(
                        title="Customer guide",
                        source_uri="guide.md",
                        mime_type="",
                        tags=[],
                        content=content,
                        content_sha256="",
                    )
                indexes = IndexManager(
                    SqlKnowledgeStore(db),
                    [m.model for m in models],
                    ann_threshold=settings.kb_ann_threshold,
                )
                start = time.perf_counter()
                outcome = await ingestor.process(workspace.id, row.id, row.generation)
                index = await indexes.get(workspace.id)
                seconds = time.perf_counter() - start
                if outcome != "ready" or index is None or not index.chunks:
                    raise RuntimeError(f"ingestion did not complete: {outcome}")
                chunks = len(index.chunks)
                if repeat:
                    rates.append(chunks / seconds)
        finally:
            await db.dispose()
            if own:
                for embedder in models:
                    close = getattr(embedder, "close", None)
                    if close is not None:
                        close()
    return {"ingest_chunks_per_s": statistics.median(rates), "ingest_chunks_per_doc": chunks}


# -- the LLM router ------------------------------------------------------------------------


def _request() -> Any:
    from fenlo_server.llm.types import ChatMessage, LlmRequest

    return LlmRequest(messages=(ChatMessage("user", QUESTION),))


async def bench_failover(
    repeats: int, mode: Mode = "http_500", chunks: int = 50
) -> dict[str, float]:
    """ms from the primary's failure written to the secondary's first token."""
    from fenlo_server.llm.factory import build_router
    from fenlo_server.llm.openai_compat import groq_provider, openai_provider
    from fenlo_server.llm.router import RouteResult

    settings = _settings()
    quiet = _Quiet("fenlo.llm")  # one "llm provider failed" warning a repeat otherwise
    async with (
        quiet,
        LocalOpenAIServer(chunks, mode) as primary,
        LocalOpenAIServer(chunks) as secondary,
    ):
        providers: dict[str, Any] = {
            "groq": groq_provider(
                api_key="x",
                base_url=f"http://127.0.0.1:{primary.port}",
                model="bench-primary",
                timeout=settings.llm_request_timeout_seconds,
            ),
            "openai": openai_provider(
                api_key="x",
                base_url=secondary.base_url,
                model="bench-secondary",
                timeout=settings.llm_request_timeout_seconds,
                request_usage=settings.openai_stream_usage,
            ),
        }
        times: list[float] = []
        reached = 0
        received = 0
        for repeat in range(repeats + 2):  # two warm-ups
            router = build_router(settings, providers=providers)  # fresh breakers
            result = RouteResult()
            failures = len(primary.failure_times)
            first: float | None = None
            texts = 0
            async for _text in router.stream(_request(), None, result):
                if first is None:
                    first = time.perf_counter()
                texts += 1
            if first is None or len(primary.failure_times) != failures + 1:
                raise RuntimeError(f"the failover did not happen as planned: {result.attempts}")
            if repeat >= 2:
                times.append(first - primary.failure_times[-1])
                reached += result.providers == ["openai"] and result.failovers == 1
                received += texts
    return {
        "failover_first_token_ms": _ms(statistics.median(times)),
        "failover_secondary_share": reached / repeats,
        "failover_chunks_per_reply": received / repeats,
    }


class _Quiet:
    """Raises a logger's level to ERROR while in use."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)
        self._level = self._logger.level

    async def __aenter__(self) -> None:
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    async def __aexit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


@contextlib.asynccontextmanager
async def server_process(chunks: int = 50) -> AsyncIterator[str]:
    """A :class:`LocalOpenAIServer` in its own process; yields its ``base_url``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fenlo_server.bench.openai_server",
        "--chunks",
        str(chunks),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def bench_router_overhead(base_url: str, replies: int, warmup: int) -> dict[str, float]:
    """Router against bare SDK on one streaming server, interleaved."""
    from openai import AsyncOpenAI

    from fenlo_server.llm.factory import build_router
    from fenlo_server.llm.openai_compat import openai_provider

    settings = _settings()
    provider = openai_provider(
        api_key="x",
        base_url=base_url,
        model="bench-model",
        timeout=settings.llm_request_timeout_seconds,
        request_usage=False,  # the same request as the bare SDK's
    )
    router = build_router(settings, providers={"openai": provider})
    bare = AsyncOpenAI(base_url=base_url, api_key="x")
    request = _request()
    messages: list[Any] = [{"role": "user", "content": QUESTION}]

    async def via_router() -> tuple[float, float, int]:
        cpu = time.process_time()
        start = time.perf_counter()
        ttft = 0.0
        n = 0
        async for _text in router.stream(request):
            if not n:
                ttft = time.perf_counter() - start
            n += 1
        return ttft, time.process_time() - cpu, n

    async def via_bare() -> tuple[float, float, int]:
        cpu = time.process_time()
        start = time.perf_counter()
        ttft = 0.0
        n = 0
        stream = await bare.chat.completions.create(
            model="bench-model", messages=messages, stream=True
        )
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    if not n:
                        ttft = time.perf_counter() - start
                    n += 1
        return ttft, time.process_time() - cpu, n

    runs: dict[str, list[tuple[float, float, int]]] = {"router": [], "bare": []}
    sides: list[tuple[str, Callable[[], Awaitable[tuple[float, float, int]]]]] = [
        ("router", via_router),
        ("bare", via_bare),
    ]
    try:
        for i in range(warmup + replies):
            pair = sides if i % 2 == 0 else sides[::-1]
            for name, run in pair:
                measured = await run()
                if i >= warmup:
                    runs[name].append(measured)
    finally:
        await bare.close()
    chunks = {name: {n for _, _, n in found} for name, found in runs.items()}
    if chunks["router"] != chunks["bare"] or len(chunks["bare"]) != 1:
        raise RuntimeError(f"the replies differ in chunks: {chunks}")
    router_ttft = statistics.median(t for t, _, _ in runs["router"])
    bare_ttft = statistics.median(t for t, _, _ in runs["bare"])
    router_cpu = statistics.median(c for _, c, _ in runs["router"])
    bare_cpu = statistics.median(c for _, c, _ in runs["bare"])
    return {
        "router_ttft_p50_ms": _ms(router_ttft),
        "bare_ttft_p50_ms": _ms(bare_ttft),
        "router_added_ttft_p50_ms": _ms(router_ttft - bare_ttft),
        "router_cpu_ms_per_reply": _ms(router_cpu),
        "bare_cpu_ms_per_reply": _ms(bare_cpu),
        "router_cpu_ratio": router_cpu / bare_cpu if bare_cpu > 0 else float("nan"),
        "chunks_per_reply": float(next(iter(chunks["bare"]))),
    }


# -- all together ----------------------------------------------------------------------------


async def run_micro(quick: bool = True, *, plan: Plan | None = None) -> dict[str, float]:
    """Every measure once, in this order; figures keyed as :data:`KEYS` and the
    module doc say. ``plan`` overrides ``quick`` (tests run tiny ones)."""
    plan = plan or (QUICK if quick else FULL)
    results: dict[str, float] = {}
    started = time.perf_counter()
    for suffix, size in plan.vector_sizes:
        found = await bench_vectors(size, plan.queries, ann_threshold=plan.ann_threshold)
        for key in ("vector_p50_ms", "vector_p99_ms", "numpy_p50_ms", "numpy_p99_ms"):
            results[f"{key}_{suffix}"] = found[key]
        results[f"ann_recall_at_10_{suffix}"] = found["ann_recall_at_10"]
        results[f"approximate_{suffix}"] = found["approximate"]
        gc.collect()
    results["ann_recall_at_10"] = results.pop(f"ann_recall_at_10_{plan.vector_sizes[-1][0]}")
    results.update(await bench_query_embedding(plan.embed_repeats))
    results.update(await bench_ingestion(plan.ingest_repeats, plan.ingest_paragraphs))
    results.update(await bench_failover(plan.failover_repeats))
    dropped = await bench_failover(plan.failover_repeats, mode="drop")
    results["failover_drop_first_token_ms"] = dropped["failover_first_token_ms"]
    async with server_process() as base_url:
        results.update(await bench_router_overhead(base_url, plan.replies, plan.warmup_replies))
    results["seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fenlo's micro-benchmarks, as JSON.")
    parser.add_argument("--full", action="store_true", help="more repeats (slower)")
    args = parser.parse_args(argv)
    results = asyncio.run(run_micro(quick=not args.full))
    print(json.dumps({k: round(v, 4) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
