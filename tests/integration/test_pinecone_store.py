"""The Pinecone vector store through the real SDK against a local Pinecone fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

pytest.importorskip("pinecone")

from pinecone.errors.exceptions import PineconeConnectionError, PineconeTimeoutError

from fenlo_server.knowledge.pinecone_store import (
    PineconeVectorStore,
    VectorStoreError,
    join_tags,
    translate_error,
)
from fenlo_server.knowledge.types import Matrix
from tests.fakes.pinecone_server import FakePinecone, Record

KEY = "test-key"
LIMIT = 10.0  # seconds any one test may take


def unit(rows: list[list[float]]) -> Matrix:
    matrix = np.asarray(rows, dtype=np.float32)
    normalised: Matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return normalised


def random_unit(n: int, d: int, seed: int = 0) -> Matrix:
    return unit(np.random.default_rng(seed).standard_normal((n, d)).tolist())


def meta(n: int, document_id: str = "doc-1") -> list[dict[str, str]]:
    return [{"document_id": document_id} for _ in range(n)]


@pytest.fixture
async def fake() -> AsyncIterator[FakePinecone]:
    async with FakePinecone(api_key=KEY) as server:
        yield server


@pytest.fixture
async def store(fake: FakePinecone) -> AsyncIterator[PineconeVectorStore]:
    async with PineconeVectorStore(KEY, fake.host, timeout=5) as s:
        yield s


async def test_round_trip_ranks_the_nearest_first_with_cosine_scores(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        vectors = unit([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1, 0, 0], [-1, 0, 0, 0]])
        ids = ["near", "close", "far", "opposite"]
        metadata: list[dict[str, str]] = [
            {"document_id": f"d-{i}", "tags": join_tags(["faq", "billing"])} for i in ids
        ]
        await store.upsert("ws1", "m1", ids, vectors, metadata)
        query = unit([[1, 0.05, 0, 0]])[0]

        hits = await store.query("ws1", "m1", query, k=3)

        assert [h.id for h in hits] == ["near", "close", "far"]
        expected = vectors.astype(np.float64) @ query.astype(np.float64)
        for hit in hits:
            assert hit.score == pytest.approx(expected[ids.index(hit.id)], abs=1e-6)
        assert hits[0].score > hits[1].score > hits[2].score

        (upsert,) = fake.requests_to("/vectors/upsert")
        assert upsert.headers["api-key"] == KEY
        assert upsert.headers["x-pinecone-api-version"]
        assert upsert.body["namespace"] == "ws1:m1"
        assert upsert.body["vectors"][0]["metadata"] == {
            "document_id": "d-near",
            "tags": ["faq", "billing"],
            "workspace": "ws1",
            "model": "m1",
        }
        (sent,) = fake.requests_to("/query")
        assert sent.body["topK"] == 3
        assert sent.body["namespace"] == "ws1:m1"
        assert sent.body["filter"] == {"workspace": {"$eq": "ws1"}, "model": {"$eq": "m1"}}


async def test_namespaces_keep_workspaces_and_models_apart(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        vectors = random_unit(5, 8)
        await store.upsert("wsA", "m1", [f"a{i}" for i in range(5)], vectors, meta(5))
        await store.upsert("wsB", "m1", [f"b{i}" for i in range(5)], vectors, meta(5))
        await store.upsert("wsA", "m2", [f"a2-{i}" for i in range(5)], vectors, meta(5))

        for workspace, model, prefix in (
            ("wsA", "m1", "a"),
            ("wsB", "m1", "b"),
            ("wsA", "m2", "a2-"),
        ):
            hits = await store.query(workspace, model, vectors[0], k=20)
            assert len(hits) == 5
            assert all(h.id.startswith(prefix) and h.id[len(prefix) :].isdigit() for h in hits)
            assert hits[0].id == f"{prefix}0"
            assert hits[0].score == pytest.approx(1.0, abs=1e-6)
        assert await store.query("wsC", "m1", vectors[0], k=5) == []
        assert set(fake.namespaces) == {"wsA:m1", "wsB:m1", "wsA:m2"}


async def test_a_record_of_another_workspace_is_never_returned(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        vectors = random_unit(2, 4)
        await store.upsert("wsB", "m1", ["b0"], vectors[:1], meta(1))
        # A record of wsA misfiled in wsB's namespace: the workspace filter keeps it out.
        fake.namespaces["wsB:m1"]["a-stray"] = Record(
            vectors[1].astype(np.float64), {"workspace": "wsA", "model": "m1"}
        )
        hits = await store.query("wsB", "m1", vectors[1], k=10)
        assert [h.id for h in hits] == ["b0"]


async def test_a_tag_filters_the_query(store: PineconeVectorStore) -> None:
    async with asyncio.timeout(LIMIT):
        vectors = random_unit(4, 6, seed=3)
        metadata: list[dict[str, str]] = [
            {"document_id": "d1", "tags": join_tags(["billing"])},
            {"document_id": "d2", "tags": "billing,faq"},  # as the ingestor joins them
            {"document_id": "d3", "tags": ""},
            {"document_id": "d4"},
        ]
        await store.upsert("ws", "m", ["t1", "t2", "t3", "t4"], vectors, metadata)
        # Tags may also come as a list.
        await store.upsert("ws", "m", ["t5"], random_unit(1, 6, seed=4), [{"tags": ["faq"]}])

        assert {h.id for h in await store.query("ws", "m", vectors[0], 10, tag="billing")} == {
            "t1",
            "t2",
        }
        assert {h.id for h in await store.query("ws", "m", vectors[0], 10, tag="faq")} == {
            "t2",
            "t5",
        }
        assert await store.query("ws", "m", vectors[0], 10, tag="nothing") == []
        assert len(await store.query("ws", "m", vectors[0], 10)) == 5


async def test_delete_by_ids(fake: FakePinecone, store: PineconeVectorStore) -> None:
    async with asyncio.timeout(LIMIT):
        vectors = random_unit(4, 4)
        await store.upsert("ws", "m", ["x1", "x2", "x3", "x4"], vectors, meta(4))
        await store.upsert("other", "m", ["x1"], vectors[:1], meta(1))

        await store.delete("ws", "m", ["x1", "x3", "never-there"])

        assert fake.ids("ws:m") == {"x2", "x4"}
        assert {h.id for h in await store.query("ws", "m", vectors[0], 10)} == {"x2", "x4"}
        assert fake.ids("other:m") == {"x1"}
        # A namespace that was never written (Pinecone answers 404) has nothing to delete.
        await store.delete("ws", "unused-model", ["x2"])
        await store.delete("ws", "m", [])
        # Pinecone takes at most 1,000 ids a request.
        before = len(fake.requests_to("/vectors/delete"))
        await store.delete("ws", "m", [f"id-{i}" for i in range(1500)])
        sizes = [len(r.body["ids"]) for r in fake.requests_to("/vectors/delete")[before:]]
        assert sizes == [1000, 500]


async def test_delete_workspace_empties_all_its_namespaces_and_no_others(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        vectors = random_unit(3, 4)
        ids = ["v1", "v2", "v3"]
        for workspace in ("a", "ab"):
            for model in ("m1", "m2"):
                await store.upsert(workspace, model, ids, vectors, meta(3))
        async with PineconeVectorStore(KEY, fake.host, "staging-", timeout=5) as staging:
            await staging.upsert("a", "m1", ids, vectors, meta(3))

            # A fresh store has written nothing itself: it finds the namespaces in the stats.
            async with PineconeVectorStore(KEY, fake.host, timeout=5) as fresh:
                await fresh.delete_workspace("a")

            assert fake.ids("a:m1") == fake.ids("a:m2") == set()
            assert fake.ids("ab:m1") == fake.ids("ab:m2") == set(ids)
            assert fake.ids("staging-a:m1") == set(ids)
            assert await store.query("a", "m1", vectors[0], 5) == []
            assert len(await store.query("ab", "m2", vectors[0], 5)) == 3
            deletes = {r.body["namespace"] for r in fake.requests_to("/vectors/delete")}
            assert deletes == {"a:m1", "a:m2"}
            assert all(r.body.get("deleteAll") for r in fake.requests_to("/vectors/delete"))

            # Namespaces the stats do not list yet (they lag writes) are emptied too:
            # the ones this store wrote and the models the caller names.
            fake.unlisted = {"ab:m1", "ab:m2", "ab:m3"}
            async with PineconeVectorStore(KEY, fake.host, timeout=5) as writer:
                await writer.upsert("ab", "m3", ids, vectors, meta(3))
                await writer.delete_workspace("ab", models=["m1"])
            assert fake.ids("ab:m1") == fake.ids("ab:m3") == set()
            assert fake.ids("ab:m2") == set(ids)  # unlisted, unwritten, unnamed: left alone
            # A workspace that has nothing anywhere is a no-op.
            await store.delete_workspace("nobody", models=["m1"])


async def test_a_large_upsert_goes_in_batches_of_at_most_100(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        vectors = random_unit(250, 16)
        ids = [f"c{i:03d}" for i in range(250)]
        await store.upsert("ws", "m", ids, vectors, meta(250))

        sizes = [len(r.body["vectors"]) for r in fake.requests_to("/vectors/upsert")]
        assert len(sizes) >= 3
        assert max(sizes) <= 100
        assert sum(sizes) == 250
        assert fake.ids("ws:m") == set(ids)
        hits = await store.query("ws", "m", vectors[123], k=1)
        assert hits[0].id == "c123"


async def test_a_wrong_api_key_is_a_permanent_error(fake: FakePinecone) -> None:
    async with asyncio.timeout(LIMIT), PineconeVectorStore("wrong", fake.host, timeout=5) as bad:
        with pytest.raises(VectorStoreError) as raised:
            await bad.upsert("ws", "m", ["x"], random_unit(1, 4), meta(1))
        assert raised.value.retryable is False
        assert raised.value.status == 401
        assert raised.value.operation == "upsert"
        with pytest.raises(VectorStoreError):
            await bad.query("ws", "m", random_unit(1, 4)[0], 3)
        assert fake.namespaces == {}


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_an_outage_is_a_retryable_error(
    status: int, fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        fake.fail_next(50, status)  # more than the SDK's own retries
        with pytest.raises(VectorStoreError) as raised:
            await store.query("ws", "m", random_unit(1, 4)[0], 3)
        assert raised.value.retryable is True
        assert raised.value.status == status
        assert len(fake.requests) >= 1
        fake.failures.clear()
        assert await store.query("ws", "m", random_unit(1, 4)[0], 3) == []


async def test_a_single_503_is_absorbed_by_the_sdk_retry(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        fake.fail_next(1, 503)
        await store.upsert("ws", "m", ["x"], random_unit(1, 4), meta(1))
        assert fake.ids("ws:m") == {"x"}
        assert [r.status for r in fake.requests_to("/vectors/upsert")] == [503, 200]


async def test_a_rejected_request_is_a_permanent_error(store: PineconeVectorStore) -> None:
    async with asyncio.timeout(LIMIT):
        await store.upsert("ws", "m", ["x"], random_unit(1, 4), meta(1))
        with pytest.raises(VectorStoreError) as raised:  # the wrong dimension
            await store.upsert("ws", "m", ["y"], random_unit(1, 5), meta(1))
        assert raised.value.retryable is False
        assert raised.value.status == 400
        assert "dimension" in str(raised.value)


async def test_the_event_loop_keeps_running_during_a_large_upsert(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        fake.delay = 0.01  # each request takes a while: the loop must serve others meanwhile
        ticks: list[float] = []

        async def heartbeat() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        beat = asyncio.create_task(heartbeat())
        try:
            await asyncio.sleep(0.01)
            start = time.monotonic()
            await store.upsert(
                "ws", "m", [f"v{i}" for i in range(2000)], random_unit(2000, 384), meta(2000)
            )
            end = time.monotonic()
        finally:
            beat.cancel()
        during = [t for t in ticks if start <= t <= end]
        gaps = np.diff([start, *during, end])
        assert len(fake.requests_to("/vectors/upsert")) == 20
        assert len(during) >= 20
        # The loop runs between the 20 requests: no stall takes a large share of
        # the upsert (relative, as a loaded machine stretches every step alike).
        assert gaps.max() < 0.5 * (end - start), (gaps.max(), end - start)
        assert len(fake.ids("ws:m")) == 2000


async def test_bad_arguments_are_refused_before_any_request(
    fake: FakePinecone, store: PineconeVectorStore
) -> None:
    async with asyncio.timeout(LIMIT):
        with pytest.raises(ValueError):
            await store.upsert("ws", "m", ["a", "b"], random_unit(1, 4), meta(2))
        with pytest.raises(ValueError):
            await store.query("ws:x", "m", random_unit(1, 4)[0], 3)
        with pytest.raises(ValueError):
            await store.delete("", "m", ["a"])
        assert await store.query("ws", "m", random_unit(1, 4)[0], 0) == []
        await store.upsert("ws", "m", [], np.zeros((0, 4), dtype=np.float32), [])
        assert fake.requests == []
        with pytest.raises(ValueError):
            PineconeVectorStore("", fake.host)


def test_connection_failures_and_timeouts_are_retryable() -> None:
    refused = translate_error(PineconeConnectionError("connection refused"), "query")
    slow = translate_error(PineconeTimeoutError("timed out"), "upsert")
    assert refused.retryable and slow.retryable
    assert refused.status is None
    assert "connection refused" in str(refused)
