"""OpenAIEmbedder with the real `openai` SDK against the local fake server
(tests/fakes/openai_server.py), which answers /v1/embeddings with vectors
derived from each text and fails on cue."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import numpy as np
import pytest

from fenlo_server import metrics
from fenlo_server.knowledge.embedders import EmbeddingError, OpenAIEmbedder
from fenlo_server.knowledge.types import Embedder
from tests.fakes.openai_server import FakeLlmServer, Reply, fake_embedding


@pytest.fixture
async def server() -> AsyncIterator[FakeLlmServer]:
    async with FakeLlmServer() as fake:
        yield fake


def embedder_for(
    server: FakeLlmServer,
    *,
    model: str = "text-embedding-3-small",
    dimensions: int | None = None,
    timeout: float = 5.0,
    concurrency: int = 4,
) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        api_key="test",
        base_url=server.openai_url,
        model=model,
        dimensions=dimensions,
        timeout=timeout,
        concurrency=concurrency,
    )


def expected(text: str, dimensions: int = 1536) -> np.ndarray:
    raw = fake_embedding(text, dimensions)
    return raw / np.linalg.norm(raw)


def embedding_requests(server: FakeLlmServer) -> list[list[str]]:
    return [seen.body["input"] for seen in server.requests if seen.path == "/v1/embeddings"]


async def test_documents_come_back_normalised_in_order(server: FakeLlmServer) -> None:
    embedder: Embedder = embedder_for(server)
    assert (embedder.model, embedder.dimensions) == ("openai:text-embedding-3-small", 1536)
    texts = ["first passage", "second passage", "third"]
    vectors = await embedder.embed_documents(texts)
    assert vectors.shape == (3, 1536)
    assert vectors.dtype == np.float32
    for text, row in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(row, expected(text), atol=1e-6)
    (seen,) = server.requests
    assert seen.path == "/v1/embeddings"
    assert seen.body["model"] == "text-embedding-3-small"
    assert seen.body["input"] == texts
    assert seen.body["encoding_format"] == "base64"
    assert "dimensions" not in seen.body
    assert seen.headers["authorization"] == "Bearer test"
    counted = metrics.REGISTRY.get_sample_value(
        "fenlo_embedded_texts_total", {"model": "openai:text-embedding-3-small"}
    )
    assert counted is not None and counted >= 3


async def test_more_than_256_inputs_go_in_several_requests(server: FakeLlmServer) -> None:
    embedder = embedder_for(server)
    texts = [f"passage number {i}" for i in range(600)]
    vectors = await embedder.embed_documents(texts)
    sent = embedding_requests(server)
    assert sorted(len(batch) for batch in sent) == [88, 256, 256]
    assert sorted(t for batch in sent for t in batch) == sorted(texts)
    for i in (0, 255, 256, 511, 512, 599):
        np.testing.assert_allclose(vectors[i], expected(texts[i]), atol=1e-6)


async def test_empty_inputs(server: FakeLlmServer) -> None:
    embedder = embedder_for(server)
    assert (await embedder.embed_documents([])).shape == (0, 1536)
    assert server.requests == []
    (row,) = await embedder.embed_documents([""])  # the API refuses "", so a space goes
    assert embedding_requests(server) == [[" "]]
    assert row.shape == (1536,)


async def test_queries_are_cached(server: FakeLlmServer) -> None:
    embedder = embedder_for(server)
    first = await embedder.embed_query("where is my order?")
    np.testing.assert_allclose(first, expected("where is my order?"), atol=1e-6)
    second = await embedder.embed_query("where is my order?")
    assert second is first
    assert len(server.requests) == 1


async def test_shorter_vectors_are_asked_for_and_named(server: FakeLlmServer) -> None:
    embedder = embedder_for(server, dimensions=256)
    assert embedder.model == "openai:text-embedding-3-small:256"
    vectors = await embedder.embed_documents(["a", "b"])
    assert vectors.shape == (2, 256)
    assert server.requests[0].body["dimensions"] == 256
    np.testing.assert_allclose(vectors[0], expected("a", 256), atol=1e-6)


async def test_another_model_needs_its_dimensions(server: FakeLlmServer) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        embedder_for(server, model="nomic-embed-text")
    server.embedding_dimensions = 768
    embedder = embedder_for(server, model="nomic-embed-text", dimensions=768)
    assert embedder.model == "openai:nomic-embed-text"
    assert (await embedder.embed_query("hello")).shape == (768,)
    assert "dimensions" not in server.requests[0].body  # only text-embedding-3 shortens


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (400, False), (401, False), (404, False)],
)
async def test_error_statuses_raise_embedding_error(
    server: FakeLlmServer, status: int, retryable: bool
) -> None:
    server.script(Reply(status=status, headers={"retry-after": "2"}))
    embedder = embedder_for(server)
    with pytest.raises(EmbeddingError) as caught:
        await embedder.embed_documents(["some text"])
    error = caught.value
    assert error.status == status
    assert error.retryable is retryable
    assert error.model == "openai:text-embedding-3-small"
    assert f"HTTP {status}" in str(error)
    assert error.retry_after == 2.0


async def test_a_failed_batch_fails_the_whole_call(server: FakeLlmServer) -> None:
    server.script(Reply(), Reply(status=500))
    embedder = embedder_for(server, concurrency=1)
    with pytest.raises(EmbeddingError) as caught:
        await embedder.embed_documents([f"t{i}" for i in range(600)])
    assert caught.value.retryable
    assert caught.value.status == 500


async def test_timeout_is_retryable(server: FakeLlmServer) -> None:
    server.script(Reply(hang=True))
    embedder = embedder_for(server, timeout=0.3)
    with pytest.raises(EmbeddingError, match="timed out") as caught:
        await embedder.embed_query("slow")
    assert caught.value.retryable
    assert caught.value.status is None


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OpenAIEmbedder(api_key="test", base_url=f"http://127.0.0.1:{port}/v1", timeout=2)
    with pytest.raises(EmbeddingError) as caught:
        await embedder.embed_documents(["hello"])
    assert caught.value.retryable


async def test_wrong_dimensions_are_refused(server: FakeLlmServer) -> None:
    server.embedding_dimensions = 8
    embedder = embedder_for(server, model="some-model", dimensions=16)
    with pytest.raises(EmbeddingError, match="expected 16 dimensions, got 8") as caught:
        await embedder.embed_documents(["x"])
    assert not caught.value.retryable
