"""DeleteWorkspace removes all of the workspace's data: its rows in every table,
its knowledge-base vectors (the in-memory index and its Pinecone namespaces),
its Redis keys and its live Chat streams; other workspaces keep theirs. A
vector store that cannot delete refuses the deletion (retryable); Redis being
down does not."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from fenlo.v1 import knowledge_pb2 as K
from fenlo.v1 import knowledge_pb2_grpc
from fenlo.v1 import workspace_pb2 as W
from fenlo_server.app import FenloApp
from tests.chat_helpers import ChatStream
from tests.conftest import _sqlite_url, make_settings, start_app
from tests.fakes.pinecone_server import FakePinecone
from tests.helpers import Api, rich_error
from tests.lifecycle_helpers import chat_turns, found_in, table_dump

PINECONE_KEY = "pc-lifecycle"


def kb(api: Api) -> knowledge_pb2_grpc.KnowledgeServiceStub:
    return knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)


async def wait_ready(api: Api, token: str, name: str) -> K.Document:
    deadline = time.monotonic() + 30
    while True:
        found = await kb(api).GetDocument(K.GetDocumentRequest(name=name), metadata=api.md(token))
        if found.status in (K.DOCUMENT_STATUS_READY, K.DOCUMENT_STATUS_FAILED):
            return found
        assert time.monotonic() < deadline, f"{name} is still {found.status}"
        await asyncio.sleep(0.05)


async def fill(api: Api, workspace: str, token: str, mark: str) -> None:
    """Knowledge (with vectors), curated answers, a key, conversations and a search."""
    md = api.md(token)
    parent = f"workspaces/{workspace}"
    document = await kb(api).ImportText(
        K.ImportTextRequest(parent=parent, text=f"# Parking\n\nThe garage code is {mark}."),
        metadata=md,
    )
    assert (await wait_ready(api, token, document.name)).status == K.DOCUMENT_STATUS_READY
    await kb(api).CreateCuratedAnswer(
        K.CreateCuratedAnswerRequest(
            parent=parent,
            curated_answer=K.CuratedAnswer(question=f"Code {mark}?", answer=f"It is {mark}."),
        ),
        metadata=md,
    )
    await api.workspaces.CreateApiKey(
        W.CreateApiKeyRequest(parent=parent, api_key=W.ApiKey(display_name=f"key {mark}")),
        metadata=md,
    )
    await chat_turns(api, token, workspace, f"contact-{mark}", [f"What is the garage code {mark}?"])
    found = await kb(api).SearchKnowledge(
        K.SearchKnowledgeRequest(parent=parent, query="garage code"), metadata=md
    )
    assert found.results


@pytest.fixture
async def pinecone() -> AsyncIterator[FakePinecone]:
    async with FakePinecone(api_key=PINECONE_KEY) as server:
        yield server


@pytest.fixture
async def pinecone_app(
    database_url: str, tmp_path: Path, pinecone: FakePinecone
) -> AsyncIterator[FenloApp]:
    app = await start_app(
        make_settings(
            tmp_path,
            database_url,
            pinecone_api_key=PINECONE_KEY,
            pinecone_index_host=pinecone.host,
        )
    )
    yield app
    await app.stop(grace=0)


def namespaces_of(pinecone: FakePinecone, workspace: str) -> dict[str, int]:
    return {
        name: len(records)
        for name, records in pinecone.namespaces.items()
        if name.startswith(f"{workspace}:") and records
    }


async def test_deleting_a_workspace_removes_all_of_its_data(
    pinecone_app: FenloApp, pinecone: FakePinecone
) -> None:
    async with Api(pinecone_app) as api:
        doomed, doomed_admin = await api.create_workspace("Doomed")
        kept, kept_admin = await api.create_workspace("Kept")
        doomed_mark, kept_mark = "dw" + uuid.uuid4().hex[:10], "kw" + uuid.uuid4().hex[:10]
        await fill(api, doomed, doomed_admin, doomed_mark)
        await fill(api, kept, kept_admin, kept_mark)
        before = await table_dump(pinecone_app.db, doomed)
        assert len([t for t, rows in before.items() if rows]) >= 8  # the scan sees the rows
        assert namespaces_of(pinecone, doomed) and namespaces_of(pinecone, kept)
        kept_rows = await table_dump(pinecone_app.db, kept)
        kept_vectors = namespaces_of(pinecone, kept)
        live = ChatStream(api, doomed_admin)
        await live.start(parent=f"workspaces/{doomed}")

        await api.workspaces.DeleteWorkspace(
            W.DeleteWorkspaceRequest(name=f"workspaces/{doomed}"),
            metadata=api.md(api.platform_token),
        )

        after = await table_dump(pinecone_app.db, doomed)
        assert {t: rows for t, rows in after.items() if rows} == {}
        assert found_in(after, doomed_mark) == []
        assert namespaces_of(pinecone, doomed) == {}
        assert doomed not in pinecone_app.knowledge.indexes._entries
        await live.failure(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
        with pytest.raises(aio.AioRpcError) as info:
            await api.workspaces.GetWorkspace(
                W.GetWorkspaceRequest(name=f"workspaces/{doomed}"),
                metadata=api.md(api.platform_token),
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # Its credentials are dead at once (no cached workspace).
        with pytest.raises(aio.AioRpcError) as info:
            await kb(api).SearchKnowledge(
                K.SearchKnowledgeRequest(parent=f"workspaces/{doomed}", query="garage code"),
                metadata=api.md(doomed_admin),
            )
        error = rich_error(info.value)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "WORKSPACE_NOT_ACTIVE",
        )

        # The other workspace has everything it had, and still finds its passage.
        assert await table_dump(pinecone_app.db, kept) == kept_rows
        assert namespaces_of(pinecone, kept) == kept_vectors
        found = await kb(api).SearchKnowledge(
            K.SearchKnowledgeRequest(parent=f"workspaces/{kept}", query="garage code"),
            metadata=api.md(kept_admin),
        )
        assert kept_mark in found.results[0].passage


async def test_a_vector_store_that_cannot_delete_keeps_the_workspace(
    sqlite_template: Path, tmp_path: Path, pinecone: FakePinecone
) -> None:
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await start_app(
        make_settings(
            tmp_path, url, pinecone_api_key=PINECONE_KEY, pinecone_index_host=pinecone.host
        )
    )
    try:
        async with Api(app) as api:
            workspace, admin = await api.create_workspace("Stuck")
            await fill(api, workspace, admin, "st" + uuid.uuid4().hex[:10])
            pinecone.fail_next(20, status=503)
            with pytest.raises(aio.AioRpcError) as info:
                await api.workspaces.DeleteWorkspace(
                    W.DeleteWorkspaceRequest(name=f"workspaces/{workspace}"), metadata=api.md(admin)
                )
            error = rich_error(info.value)
            assert (error.code, error.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "DEPENDENCY_UNAVAILABLE",
            )
            assert error.retry_delay
            got = await api.workspaces.GetWorkspace(
                W.GetWorkspaceRequest(name=f"workspaces/{workspace}"), metadata=api.md(admin)
            )
            assert got.display_name == "Stuck"
            pinecone.failures.clear()
            await api.workspaces.DeleteWorkspace(
                W.DeleteWorkspaceRequest(name=f"workspaces/{workspace}"), metadata=api.md(admin)
            )
            assert namespaces_of(pinecone, workspace) == {}
    finally:
        await app.stop(grace=0)


async def redis_keys(redis_url: str, fragment: str) -> list[str]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return sorted([k.decode() async for k in client.scan_iter(match=f"*{fragment}*")])
    finally:
        await client.aclose()


async def test_deleting_a_workspace_removes_its_redis_keys(
    redis_url: str, sqlite_template: Path, tmp_path: Path
) -> None:
    import redis.asyncio

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    queue = f"fenlo:test:jobs:{uuid.uuid4().hex}"
    app = await start_app(make_settings(tmp_path, url, redis_url=redis_url, jobs_queue=queue))
    client = redis.asyncio.Redis.from_url(redis_url)
    kept = ""
    try:
        async with Api(app) as api:
            doomed, admin = await api.create_workspace("Redis doomed")
            kept, _ = await api.create_workspace("Redis kept")
            # Keys as the shared limits, cache and locks write them: the workspace id
            # in the key, with expiries.
            for workspace in (doomed, kept):
                for key in (
                    f"fenlo:test:rl:{workspace}:rpm",
                    f"fenlo:test:cache:ws:{workspace}",
                    f"fenlo:test:lock:{workspace}:conversation",
                ):
                    await client.set(key, "1", ex=300)
            assert len(await redis_keys(redis_url, doomed)) == 3

            await api.workspaces.DeleteWorkspace(
                W.DeleteWorkspaceRequest(name=f"workspaces/{doomed}"), metadata=api.md(admin)
            )

            assert await redis_keys(redis_url, doomed) == []
            assert len(await redis_keys(redis_url, kept)) == 3
    finally:
        if kept:
            for key in await redis_keys(redis_url, kept):
                await client.delete(key)
        await client.aclose()
        await app.stop(grace=0)


async def test_redis_down_does_not_stop_a_workspace_deletion(
    sqlite_template: Path, tmp_path: Path
) -> None:
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await start_app(make_settings(tmp_path, url, redis_url="redis://127.0.0.1:1/0"))
    try:
        async with Api(app) as api:
            workspace, admin = await api.create_workspace("No Redis")
            await chat_turns(api, admin, workspace, "c", ["hello"])
            await api.workspaces.DeleteWorkspace(
                W.DeleteWorkspaceRequest(name=f"workspaces/{workspace}"), metadata=api.md(admin)
            )
            after = await table_dump(app.db, workspace)
            assert {t: rows for t, rows in after.items() if rows} == {}
    finally:
        await app.stop(grace=0)
