"""The micro-benchmarks at a tiny size: every figure is there and means what it
says (no timing thresholds: the harness judges performance, not the tests)."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from fenlo_server.bench import micro
from fenlo_server.bench.openai_server import LocalOpenAIServer
from tests.conftest import shared_embedders

TINY = micro.Plan(
    vector_sizes=(("10k", 300), ("100k", 600)),
    ann_threshold=500,  # the "100k" index is an HNSW one, the "10k" one exact
    queries=10,
    embed_repeats=2,
    ingest_repeats=1,
    ingest_paragraphs=4,
    failover_repeats=2,
    replies=2,
    warmup_replies=1,
)


async def chat(client: httpx.AsyncClient, url: str) -> tuple[int, list[str]]:
    """POST one streamed chat request; the status and the SSE data lines."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        lines = [line async for line in response.aiter_lines()]
    return response.status_code, [line[6:] for line in lines if line.startswith("data: ")]


async def test_the_server_streams_its_chunks_then_done_and_fails_on_demand() -> None:
    async with LocalOpenAIServer(chunks=50) as server, httpx.AsyncClient() as client:
        status, events = await chat(client, server.base_url)
        assert status == 200
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        contents = [c["choices"][0]["delta"].get("content") for c in chunks]
        assert sum(1 for c in contents if c) == 50
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        status, _ = await chat(client, server.base_url)  # the same keep-alive connection
        assert (server.requests, server.replies, server.chunks_sent) == (2, 2, 100)

        server.mode = "http_500"
        status, events = await chat(client, server.base_url)
        assert status == 500
        assert len(server.failure_times) == 1

        server.mode = "drop"
        with pytest.raises(httpx.TransportError):
            await chat(client, server.base_url)
        assert len(server.failure_times) == 2
        assert server.replies == 2


async def test_the_server_in_its_own_process_answers_the_sdk() -> None:
    from openai import AsyncOpenAI

    async with micro.server_process(chunks=7) as url:
        client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        texts = [c.choices[0].delta.content async for c in stream if c.choices]
        await client.close()
    assert texts.count(None) == 1  # the finishing chunk
    assert len([t for t in texts if t]) == 7


def test_clustered_vectors_are_unit_vectors_with_close_neighbours() -> None:
    vectors = micro.clustered_vectors(6_000)  # ~20 a cluster
    assert vectors.shape == (6_000, micro.DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    best = np.sort(vectors[1:] @ vectors[0])[-5:]
    assert best.min() > 0.5  # its cluster: far closer than random unit vectors (~0.05)
    assert micro.brute_force_top(vectors, vectors[3], 3)[0] == 3


async def test_an_exact_index_has_full_recall() -> None:
    found = await micro.bench_vectors(300, 20)  # far below the server's ANN threshold
    assert found["approximate"] == 0.0
    assert found["ann_recall_at_10"] == 1.0
    assert 0 < found["vector_p50_ms"] <= found["vector_p99_ms"]
    assert 0 < found["numpy_p50_ms"] <= found["numpy_p99_ms"]


async def test_an_hnsw_index_recall_is_measured_against_brute_force() -> None:
    found = await micro.bench_vectors(800, 20, ann_threshold=100)
    assert found["approximate"] == 1.0
    assert 0.5 <= found["ann_recall_at_10"] <= 1.0


async def test_ingestion_counts_the_passages_it_indexed() -> None:
    found = await micro.bench_ingestion(1, 6, embedders=shared_embedders())
    assert found["ingest_chunks_per_doc"] >= 2
    assert found["ingest_chunks_per_s"] > 0


@pytest.mark.parametrize("mode", ["http_500", "drop"])
async def test_failover_reaches_the_secondary(mode: str) -> None:
    found = await micro.bench_failover(3, mode=mode)  # type: ignore[arg-type]
    assert found["failover_secondary_share"] == 1.0
    assert found["failover_chunks_per_reply"] == 50
    assert found["failover_first_token_ms"] > 0


async def test_router_and_bare_sdk_get_the_same_replies() -> None:
    async with LocalOpenAIServer(chunks=50) as server:
        found = await micro.bench_router_overhead(server.base_url, replies=3, warmup=1)
    assert server.replies == server.requests == 2 * (3 + 1)
    assert server.chunks_sent == 50 * 2 * (3 + 1)
    assert found["chunks_per_reply"] == 50
    assert found["router_cpu_ms_per_reply"] > 0 and found["bare_cpu_ms_per_reply"] > 0
    assert math.isclose(
        found["router_cpu_ratio"],
        found["router_cpu_ms_per_reply"] / found["bare_cpu_ms_per_reply"],
    )
    assert math.isclose(
        found["router_added_ttft_p50_ms"],
        found["router_ttft_p50_ms"] - found["bare_ttft_p50_ms"],
        abs_tol=1e-9,
    )


async def test_run_micro_reports_every_figure() -> None:
    results = await micro.run_micro(plan=TINY)
    missing = [key for key in micro.KEYS if key not in results]
    assert not missing
    assert all(math.isfinite(v) for v in results.values())
    assert results["ann_recall_at_10_10k"] == 1.0  # exact
    assert 0 <= results["ann_recall_at_10"] <= 1
    assert results["approximate_100k"] == 1.0
    assert results["failover_secondary_share"] == 1.0
    assert results["chunks_per_reply"] == 50
