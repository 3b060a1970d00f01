"""The local embedders with their real models (MiniLM int8 on onnxruntime, USE
multilingual v3 in numpy): vectors, batching, threads, the query cache."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fenlo_server import metrics
from fenlo_server.knowledge.embedders import (
    MiniLmEmbedder,
    QueryBatcher,
    UseMultilingualEmbedder,
)
from fenlo_server.knowledge.types import Embedder, Matrix, Vector

PASSWORD_Q = "How do I reset my password?"
PASSWORD_DOC = "Steps to change your account password"
OFFICE_DOC = "Our office is closed on Sundays"

ENGLISH = [
    "Our opening hours are Monday to Friday 9am to 6pm.",
    "You can reset your password from the account settings page.",
    "Shipping to Europe usually takes five to seven business days.",
    "We accept payment by credit card and bank transfer.",
    "Refunds are issued within 14 days of receiving the returned item.",
]

PARAGRAPH = (
    "Fenlo stores every document a workspace uploads, splits it into sections under "
    "their headings, and embeds small passages so that a question can find the right "
    "context quickly. "
)


@pytest.fixture(scope="module")
def minilm() -> Iterator[MiniLmEmbedder]:
    embedder = MiniLmEmbedder()
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def use() -> Iterator[UseMultilingualEmbedder]:
    embedder = UseMultilingualEmbedder()
    yield embedder
    embedder.close()


def cosine(a: Vector, b: Vector) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_unit_rows(matrix: Matrix, dimensions: int) -> None:
    assert matrix.dtype == np.float32
    assert matrix.shape[1] == dimensions
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


def chunk_of(embedder: MiniLmEmbedder, tokens: int, salt: int = 0) -> str:
    """Text of about ``tokens`` word pieces."""
    words = (PARAGRAPH * 8).split()
    text = f"Passage {salt}."
    for word in words:
        if embedder.count_tokens(f"{text} {word}") > tokens:
            break
        text = f"{text} {word}"
    return text


# -- MiniLM ----------------------------------------------------------------------


async def test_minilm_vectors_are_unit_float32(minilm: MiniLmEmbedder) -> None:
    embedder: Embedder = minilm
    assert (embedder.model, embedder.dimensions) == ("minilm-l6-v2-int8", 384)
    documents = await minilm.embed_documents([PASSWORD_DOC, OFFICE_DOC, ""])
    assert documents.shape == (3, 384)
    assert_unit_rows(documents, 384)
    query = await minilm.embed_query(PASSWORD_Q)
    assert query.shape == (384,)
    assert query.dtype == np.float32
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-5
    empty = await minilm.embed_documents([])
    assert empty.shape == (0, 384)


async def test_minilm_ranks_by_meaning(minilm: MiniLmEmbedder) -> None:
    query = await minilm.embed_query(PASSWORD_Q)
    password, office = await minilm.embed_documents([PASSWORD_DOC, OFFICE_DOC])
    assert float(query @ password) > float(query @ office) + 0.3


async def test_minilm_batch_padding_does_not_change_a_vector(minilm: MiniLmEmbedder) -> None:
    long_text = chunk_of(minilm, 240)
    assert minilm.count_tokens(long_text) > 200
    (alone,) = await minilm.embed_documents([PASSWORD_Q])
    in_batch = await minilm.embed_documents([PASSWORD_Q, long_text])
    assert cosine(alone, in_batch[0]) > 0.9999
    assert cosine(alone, await minilm.embed_query(PASSWORD_Q)) > 0.9999


async def test_minilm_truncates_long_inputs_to_its_window(minilm: MiniLmEmbedder) -> None:
    head = chunk_of(minilm, 250)
    longer = head + " and then a great many further words " * 40
    assert minilm.count_tokens(longer) > 256
    a, b = await minilm.embed_documents([head, longer])
    assert cosine(a, b) > 0.97  # only the first 254 word pieces count


def test_count_tokens_counts_word_pieces_without_truncation(minilm: MiniLmEmbedder) -> None:
    assert minilm.count_tokens("hello world") == 2
    assert minilm.count_tokens("") == 0
    assert minilm.count_tokens("word " * 600) == 600  # beyond the model's 256
    assert minilm.count_tokens("unbelievably") > 1  # word pieces, not words


async def test_minilm_keeps_the_input_order_across_sorted_batches() -> None:
    embedder = MiniLmEmbedder(batch_size=3)
    try:
        texts = [
            PARAGRAPH * 2,
            "short",
            OFFICE_DOC,
            PARAGRAPH,
            "a",
            PASSWORD_DOC + " " + OFFICE_DOC,
            "medium sized sentence here",
        ]
        together = await embedder.embed_documents(texts)
        assert embedder.model_calls == 3  # 7 texts in batches of 3
        for text, row in zip(texts, together, strict=True):
            (alone,) = await embedder.embed_documents([text])
            assert cosine(alone, row) > 0.9999, text
    finally:
        embedder.close()


async def test_concurrent_queries_share_model_runs(minilm: MiniLmEmbedder) -> None:
    questions = [f"Question {i}: where can I find invoice number {i * 7}?" for i in range(20)]
    one_by_one = [(await minilm.embed_documents([q]))[0] for q in questions]
    before = minilm.model_calls
    vectors = await asyncio.gather(*(minilm.embed_query(q) for q in questions))
    runs = minilm.model_calls - before
    assert runs < 20
    for question, vector, reference in zip(questions, vectors, one_by_one, strict=True):
        assert cosine(vector, reference) > 0.9999, question


async def test_queries_arriving_during_a_run_go_in_the_next_one(minilm: MiniLmEmbedder) -> None:
    before = minilm.model_calls
    first = asyncio.create_task(minilm.embed_query("the first question, alone"))
    await asyncio.sleep(0)  # the first run starts at once
    later = [asyncio.create_task(minilm.embed_query(f"a later question {i}")) for i in range(8)]
    await asyncio.gather(first, *later)
    assert minilm.model_calls - before <= 3  # typically 2: the first, then the 8 together


async def test_identical_concurrent_queries_run_once(minilm: MiniLmEmbedder) -> None:
    before = minilm.model_calls
    text = "the same question asked five times at once"
    vectors = await asyncio.gather(*(minilm.embed_query(text) for _ in range(5)))
    assert minilm.model_calls - before == 1
    assert all(v is vectors[0] for v in vectors)


async def test_query_cache_answers_a_repeated_query(minilm: MiniLmEmbedder) -> None:
    text = "is there parking near the office?"
    first = await minilm.embed_query(text)
    calls, hits = minilm.model_calls, minilm.cache.hits
    second = await minilm.embed_query(text)
    assert second is first
    assert minilm.model_calls == calls
    assert minilm.cache.hits == hits + 1
    assert not second.flags.writeable  # shared between callers, so read-only
    counted = metrics.REGISTRY.get_sample_value(
        "fenlo_embedded_texts_total", {"model": "minilm-l6-v2-int8"}
    )
    assert counted is not None and counted > 0


async def test_query_cache_is_bounded() -> None:
    embedder = MiniLmEmbedder(cache_size=2)
    try:
        for text in ("one", "two", "three"):
            await embedder.embed_query(text)
        assert len(embedder.cache) == 2
        calls = embedder.model_calls
        await embedder.embed_query("one")  # the oldest was evicted
        assert embedder.model_calls == calls + 1
    finally:
        embedder.close()


async def test_event_loop_and_queries_stay_responsive_during_ingestion(
    minilm: MiniLmEmbedder,
) -> None:
    await minilm.warm()
    documents = [chunk_of(minilm, 128, salt=i) for i in range(64)]
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    ingest = asyncio.create_task(minilm.embed_documents(documents))
    await asyncio.sleep(0.05)
    query = await minilm.embed_query("a question asked while documents are being embedded")
    query_done_first = not ingest.done()
    vectors = await ingest
    stop.set()
    await beat
    assert vectors.shape == (64, 384)
    assert query.shape == (384,)
    assert query_done_first  # the query did not wait behind the documents
    assert len(gaps) > 10
    print(f"\nmax heartbeat gap {max(gaps) * 1000:.1f} ms")
    assert max(gaps) < 0.1, f"the event loop stalled for {max(gaps) * 1000:.0f} ms"


# -- the query batcher on its own ----------------------------------------------------


async def test_batcher_gives_a_failed_run_to_every_waiter_and_recovers() -> None:
    runs: list[list[str]] = []

    async def run(texts: list[str]) -> list[Vector]:
        runs.append(texts)
        await asyncio.sleep(0.01)
        if "boom" in texts:
            raise RuntimeError("model failed")
        return [np.full(2, len(t), dtype=np.float32) for t in texts]

    batcher = QueryBatcher(run, max_batch=4)
    results = await asyncio.gather(
        batcher.embed("boom"), batcher.embed("ab"), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert float((await batcher.embed("abc"))[0]) == 3.0
    assert runs == [["boom", "ab"], ["abc"]]


async def test_batcher_respects_max_batch_and_cancelled_waiters() -> None:
    runs: list[list[str]] = []

    async def run(texts: list[str]) -> list[Vector]:
        runs.append(texts)
        await asyncio.sleep(0.01)
        return [np.full(2, len(t), dtype=np.float32) for t in texts]

    batcher = QueryBatcher(run, max_batch=2)
    gone = asyncio.create_task(batcher.embed("cancelled"))
    kept = [asyncio.create_task(batcher.embed("x" * n)) for n in range(1, 5)]
    await asyncio.sleep(0)
    gone.cancel()
    values = await asyncio.gather(*kept)
    assert [float(v[0]) for v in values] == [1.0, 2.0, 3.0, 4.0]
    assert all(len(texts) <= 2 for texts in runs)
    assert all("cancelled" not in texts for texts in runs)


# -- USE multilingual -------------------------------------------------------------------


async def test_use_vectors_are_unit_float32(use: UseMultilingualEmbedder) -> None:
    embedder: Embedder = use
    assert (embedder.model, embedder.dimensions) == ("use-multilingual-v3", 512)
    documents = await use.embed_documents(ENGLISH)
    assert documents.shape == (5, 512)
    assert_unit_rows(documents, 512)
    query = await use.embed_query("hello")
    assert query.shape == (512,)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("¿Cuál es el horario de apertura?", 0),
        ("Quelles sont vos heures d'ouverture ?", 0),
        ("Wann haben Sie geöffnet?", 0),
        ("¿Cómo puedo restablecer mi contraseña?", 1),
        ("Combien de temps prend la livraison en Europe ?", 2),
        ("Wie kann ich bezahlen?", 3),
    ],
)
async def test_use_finds_english_passages_for_other_languages(
    use: UseMultilingualEmbedder, question: str, expected: int
) -> None:
    passages = await use.embed_documents(ENGLISH)
    scores = passages @ await use.embed_query(question)
    assert int(np.argmax(scores)) == expected, scores


async def test_use_concurrent_queries_share_model_runs(use: UseMultilingualEmbedder) -> None:
    questions = [f"¿Dónde está mi pedido número {i}?" for i in range(20)]
    one_by_one = [(await use.embed_documents([q]))[0] for q in questions]
    before = use.model_calls
    vectors = await asyncio.gather(*(use.embed_query(q) for q in questions))
    assert use.model_calls - before < 20
    for vector, reference in zip(vectors, one_by_one, strict=True):
        assert cosine(vector, reference) > 0.9999


# -- measurements (printed with -s, never asserted) -----------------------------------


async def test_print_query_latency_and_document_throughput(
    minilm: MiniLmEmbedder, use: UseMultilingualEmbedder
) -> None:
    documents = [chunk_of(minilm, 128, salt=1000 + i) for i in range(64)]
    lines = []
    for embedder in (minilm, use):
        await embedder.warm()
        latencies = []
        for i in range(40):
            start = time.perf_counter()
            await embedder.embed_query(f"How do I change the billing address on invoice {i}?")
            latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        await embedder.embed_documents(documents)
        rate = len(documents) / (time.perf_counter() - start)
        lines.append(
            f"{embedder.model}: query p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p95 {sorted(latencies)[int(0.95 * len(latencies))] * 1000:.1f} ms; "
            f"{rate:.1f} documents/s of ~128-token passages"
        )
    print("\n" + "\n".join(lines))
