"""Document ingestion as background jobs: a crash mid-way leaves the document
retryable and never half-indexed; ARQ workers run the jobs when Redis is
configured (and the server runs them itself when Redis cannot take them);
changing the embedding models re-embeds; Pinecone holds the vectors when
configured."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fenlo.v1 import knowledge_pb2, knowledge_pb2_grpc
from fenlo_server.jobs.ingestion import IngestionConfig, Ingestor
from fenlo_server.knowledge.factory import token_counter
from fenlo_server.knowledge.types import Matrix, Vector
from fenlo_server.storage.db import Database
from fenlo_server.storage.knowledge import DocumentRepository, count_chunks
from fenlo_server.storage.repositories import WorkspaceStore
from tests.conftest import make_settings, shared_embedders, start_app
from tests.fakes.pinecone_server import FakePinecone
from tests.helpers import Api

K = knowledge_pb2
TEXT = "# Parking\n\nParking is free for customers in the garage.\n\n# Pets\n\nDogs are welcome."


class FailingOnce:
    """An embedder that crashes on its first documents call, like a worker dying
    mid-ingestion (a test double of the Embedder protocol, around the real model)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model = inner.model
        self.dimensions = inner.dimensions
        self.failures = 1

    async def embed_documents(self, texts: list[str]) -> Matrix:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the worker died")
        result: Matrix = await self.inner.embed_documents(texts)
        return result

    async def embed_query(self, text: str) -> Vector:
        result: Vector = await self.inner.embed_query(text)
        return result


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def new_document(db: Database, text: str = TEXT) -> tuple[str, str, int]:
    async with db.unscoped("test workspace") as session:
        store = WorkspaceStore(session)
        workspace = await store.create(display_name="Jobs", settings={}, quotas={})
    async with db.workspace(workspace.id) as session:
        row = await DocumentRepository(session).create(
            title="Guide",
            source_uri="guide.md",
            mime_type="",
            tags=[],
            content=text.encode(),
            content_sha256="",
        )
    return workspace.id, row.id, row.generation


async def document(db: Database, workspace: str, document_id: str) -> Any:
    async with db.workspace(workspace) as session:
        return await DocumentRepository(session).get(document_id), await count_chunks(session)


async def test_a_crash_mid_ingestion_leaves_the_document_retryable(db: Database) -> None:
    embedders = shared_embedders()
    failing = FailingOnce(embedders[0])
    ingestor = Ingestor(
        db,
        [failing, embedders[1]],
        token_counter(embedders),
        IngestionConfig(lease=timedelta(seconds=0)),
    )
    workspace, document_id, generation = await new_document(db)
    with pytest.raises(RuntimeError, match="the worker died"):
        await ingestor.process(workspace, document_id, generation)
    row, chunks = await document(db, workspace, document_id)
    assert row.status == "PROCESSING"  # not READY, not FAILED: retryable
    assert chunks == 0  # and nothing half-written
    # The lease ran out: the sweeper finds it and a new attempt completes it.
    assert (workspace, document_id, generation) in await ingestor.stale()
    assert await ingestor.process(workspace, document_id, generation) == "ready"
    row, chunks = await document(db, workspace, document_id)
    assert (row.status, row.attempts) == ("READY", 2)
    assert chunks == row.chunk_count > 0


async def test_a_live_lease_keeps_a_second_worker_out(db: Database) -> None:
    embedders = shared_embedders()
    ingestor = Ingestor(db, embedders, token_counter(embedders))
    workspace, document_id, generation = await new_document(db)
    async with db.workspace(workspace) as session:
        repo = DocumentRepository(session)
        assert await repo.claim(document_id, generation, timedelta(minutes=5))
    assert await ingestor.process(workspace, document_id, generation) == "skipped"
    assert (workspace, document_id, generation) not in await ingestor.stale()


async def test_too_many_failed_attempts_end_in_failed(db: Database) -> None:
    embedders = shared_embedders()
    failing = FailingOnce(embedders[0])
    failing.failures = 10
    ingestor = Ingestor(
        db, [failing], token_counter(embedders), IngestionConfig(lease=timedelta(0), max_attempts=2)
    )
    workspace, document_id, generation = await new_document(db)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await ingestor.process(workspace, document_id, generation)
    assert await ingestor.process(workspace, document_id, generation) == "failed"
    row, _ = await document(db, workspace, document_id)
    assert (row.status, row.failure_reason) == ("FAILED", "internal")


async def test_a_reindex_during_processing_supersedes_the_old_job(db: Database) -> None:
    embedders = shared_embedders()
    ingestor = Ingestor(db, embedders, token_counter(embedders))
    workspace, document_id, generation = await new_document(db)
    async with db.workspace(workspace) as session:
        await DocumentRepository(session).claim(document_id, generation, timedelta(0))
        await DocumentRepository(session).request_reindex(document_id)
    assert await ingestor.process(workspace, document_id, generation) == "skipped"
    assert await ingestor.process(workspace, document_id, generation + 1) == "ready"


async def test_changing_the_embedders_re_embeds_every_document(db: Database) -> None:
    minilm, use = shared_embedders()
    first = Ingestor(db, [minilm], token_counter([minilm]))
    workspace, document_id, generation = await new_document(db)
    assert await first.process(workspace, document_id, generation) == "ready"
    row, _ = await document(db, workspace, document_id)
    assert row.embedding_models == ["minilm-l6-v2-int8"]
    second = Ingestor(db, [minilm, use], token_counter([minilm]))
    jobs = [job for job in await second.outdated() if job[1] == document_id]
    assert jobs == [(workspace, document_id, generation + 1)]
    assert await second.process(*jobs[0]) == "ready"
    row, _ = await document(db, workspace, document_id)
    assert row.embedding_models == ["minilm-l6-v2-int8", "use-multilingual-v3"]
    assert [job for job in await second.outdated() if job[1] == document_id] == []


async def wait_ready(api: Api, token: str, name: str, within: float = 30.0) -> K.Document:
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)
    deadline = time.monotonic() + within
    while True:
        found = await stub.GetDocument(K.GetDocumentRequest(name=name), metadata=api.md(token))
        if found.status in (K.DOCUMENT_STATUS_READY, K.DOCUMENT_STATUS_FAILED):
            return found
        assert time.monotonic() < deadline, f"{name} is still {found.status}"
        await asyncio.sleep(0.05)


async def import_text(api: Api, workspace: str, token: str, text: str) -> K.Document:
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)
    return await stub.ImportText(
        K.ImportTextRequest(parent=f"workspaces/{workspace}", text=text), metadata=api.md(token)
    )


async def test_arq_workers_run_the_jobs_when_redis_is_configured(
    redis_url: str, sqlite_template: Path, tmp_path: Path
) -> None:
    from arq.worker import Worker

    from fenlo_server.jobs.arq_worker import worker_settings
    from tests.conftest import _sqlite_url

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    queue = f"fenlo:test:jobs:{uuid.uuid4().hex}"
    settings = make_settings(tmp_path, url, redis_url=redis_url, jobs_queue=queue)
    app = await start_app(settings)
    try:
        async with Api(app) as api:
            workspace, token = await api.create_workspace("Arq")
            created = await import_text(api, workspace, token, TEXT)
            await asyncio.sleep(0.3)
            stub = knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)
            pending = await stub.GetDocument(
                K.GetDocumentRequest(name=created.name), metadata=api.md(token)
            )
            assert pending.status == K.DOCUMENT_STATUS_PENDING  # the server did not run it
            options = worker_settings(settings)
            options.update(burst=True, poll_delay=0.05, handle_signals=False)
            worker = Worker(**options)
            try:
                await asyncio.wait_for(worker.async_run(), 60)
            finally:
                await worker.close()
            assert worker.jobs_complete >= 1
            done = await wait_ready(api, token, created.name)
            assert done.status == K.DOCUMENT_STATUS_READY
    finally:
        await app.stop(grace=0)


async def test_the_worker_relays_the_events_its_jobs_commit(
    redis_url: str, sqlite_template: Path, tmp_path: Path
) -> None:
    """document.ready, committed by the worker, reaches Redis from the worker's own
    relay and the server's bus through the stream, without a server poll."""
    from arq.worker import Worker

    from fenlo_server.events.bus import PublishedEvent
    from fenlo_server.jobs.arq_worker import worker_settings
    from tests.conftest import _sqlite_url

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    tag = uuid.uuid4().hex
    settings = make_settings(
        tmp_path,
        url,
        redis_url=redis_url,
        jobs_queue=f"fenlo:test:jobs:{tag}",
        events_redis_prefix=f"fenlo-test-{tag}",
        # The server's relay polls once a minute: only the worker's can be quick.
        events_relay_poll_seconds=60,
    )
    app = await start_app(settings)
    seen: list[PublishedEvent] = []
    ready = asyncio.Event()

    async def on_ready(event: PublishedEvent) -> None:
        seen.append(event)
        ready.set()

    app.bus.subscribe("test", on_ready, types=["document.ready"])
    try:
        async with Api(app) as api:
            workspace, token = await api.create_workspace("Worker relay")
            created = await import_text(api, workspace, token, TEXT)
            await asyncio.sleep(0.3)  # the server's relay handles the upload's commit
            options = worker_settings(settings)
            options.update(burst=True, poll_delay=0.05, handle_signals=False)
            worker = Worker(**options)
            try:
                await asyncio.wait_for(worker.async_run(), 60)
            finally:
                await worker.close()
            await asyncio.wait_for(ready.wait(), 10)
            [event] = seen
            assert event.workspace_id == workspace
            assert event.payload["document"] == created.name
            entries = await app.redis.xrange(f"fenlo-test-{tag}:ws:{workspace}:events")
            fields = [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]
            [entry] = [f for f in fields if f["type"] == "document.ready"]
            assert entry["id"] == event.id
            assert entry["origin"] != app.relay.replica_id  # the worker sent it
    finally:
        await app.stop(grace=0)


async def test_redis_refusing_a_job_runs_it_in_the_server(
    sqlite_template: Path, tmp_path: Path
) -> None:
    from tests.conftest import _sqlite_url

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await start_app(make_settings(tmp_path, url, redis_url="redis://127.0.0.1:1/0"))
    try:
        async with Api(app) as api:
            workspace, token = await api.create_workspace("No Redis")
            created = await import_text(api, workspace, token, TEXT)
            done = await wait_ready(api, token, created.name)
            assert done.status == K.DOCUMENT_STATUS_READY
    finally:
        await app.stop(grace=0)


async def test_pinecone_holds_the_vectors_when_configured(
    sqlite_template: Path, tmp_path: Path
) -> None:
    from tests.conftest import _sqlite_url

    async with FakePinecone(api_key="pc-test") as pinecone:
        url = _sqlite_url(sqlite_template, tmp_path / "db")
        app = await start_app(
            make_settings(
                tmp_path, url, pinecone_api_key="pc-test", pinecone_index_host=pinecone.host
            )
        )
        try:
            async with Api(app) as api:
                workspace, token = await api.create_workspace("Pinecone")
                created = await import_text(api, workspace, token, TEXT)
                done = await wait_ready(api, token, created.name)
                assert done.status == K.DOCUMENT_STATUS_READY
                namespace = f"{workspace}:minilm-l6-v2-int8"
                assert len(pinecone.ids(namespace)) == done.chunk_count
                stub = knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)
                found = await stub.SearchKnowledge(
                    K.SearchKnowledgeRequest(
                        parent=f"workspaces/{workspace}", query="Can I bring my dog?"
                    ),
                    metadata=api.md(token),
                )
                assert "Dogs are welcome" in found.results[0].passage
                assert pinecone.requests_to("/query")
                await stub.DeleteDocument(
                    K.DeleteDocumentRequest(name=created.name), metadata=api.md(token)
                )
                assert pinecone.ids(namespace) == set()
        finally:
            await app.stop(grace=0)
