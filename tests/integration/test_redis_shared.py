"""Two servers on one database and the real Redis behave as one: a workspace's
quotas are shared exactly, a conversation's live-stream lock holds across them,
and a change made through one is seen by the other on its next read.

Workspace ids are new for every test, so every Redis key these tests touch
(``fenlo:rl:...:<workspace>``, ``fenlo:cache:workspace:<workspace>``, ...) is
their own. The in-process caches get a long TTL here, so only invalidation can
explain a fresh read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2
from grpc import aio
from grpc_health.v1 import health_pb2

from fenlo.v1 import chat_pb2, workspace_pb2
from fenlo_server.auth import apikeys
from fenlo_server.locks import PREFIX as LOCK_PREFIX
from tests.chat_helpers import ChatStream
from tests.conftest import PG_ENV, _sqlite_url
from tests.helpers import Api, rich_error
from tests.integration.test_ratelimit import create_key, end_chat, get, open_chat, ws_name
from tests.redis_helpers import redis_health, replicas

LONG_TTL = 300.0


@pytest.fixture
def shared_database(
    postgres_url: str | None, sqlite_template: Path, tmp_path: Path
) -> Iterator[str]:
    """PostgreSQL when the tests have it (replicas' real set-up), else one SQLite file."""
    yield (
        postgres_url
        if os.environ.get(PG_ENV) and postgres_url
        else _sqlite_url(sqlite_template, tmp_path / "db")
    )


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


async def limited(api: Api, **quotas: int) -> tuple[str, str]:
    return await api.create_workspace("Shared", quotas=workspace_pb2.WorkspaceQuotas(**quotas))


async def test_requests_per_minute_are_shared_exactly(
    tmp_path: Path, shared_database: str, redis_url: str
) -> None:
    async with replicas(tmp_path, shared_database, redis_url) as (one, two):
        assert await redis_health(one) == health_pb2.HealthCheckResponse.SERVING
        workspace, admin = await limited(one, requests_per_minute=7)
        # Seven requests, alternating between the servers, all succeed ...
        for i in range(7):
            await get(one if i % 2 else two, workspace, admin)
        # ... and the eighth is refused on either.
        for api in (one, two):
            with pytest.raises(aio.AioRpcError) as info:
                await get(api, workspace, admin)
            error = rich_error(info.value)
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert error.reason == "RATE_LIMITED"
            assert error.quota_violations == [(ws_name(workspace), "requests_per_minute")]


async def test_concurrent_chat_streams_are_shared(
    tmp_path: Path, shared_database: str, redis_url: str
) -> None:
    async with replicas(tmp_path, shared_database, redis_url) as (one, two):
        workspace, admin = await limited(one, concurrent_chat_streams=1)
        first = await open_chat(one, one.md(admin), ws_name(workspace))
        with pytest.raises(aio.AioRpcError) as info:
            await open_chat(two, two.md(admin), ws_name(workspace))
        error = rich_error(info.value)
        assert (error.code, error.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CONCURRENCY_LIMITED",
        )
        await end_chat(first)

        async def opens() -> bool:
            try:
                call = await open_chat(two, two.md(admin), ws_name(workspace))
            except aio.AioRpcError:
                return False
            await end_chat(call)
            return True

        # The slot is released in the background as the first stream ends.
        for _ in range(200):  # up to ~10 s: a loaded machine is slow, a stale cache is forever
            if await opens():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the slot of the closed stream was not freed")


async def test_the_conversation_lock_holds_across_servers(
    tmp_path: Path, shared_database: str, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with replicas(tmp_path, shared_database, redis_url) as (one, two):
        workspace, token = await one.create_workspace("Locked")
        first = ChatStream(one, token)
        session = await first.start(parent=ws_name(workspace))
        conversation = session.conversation.name
        conversation_id = conversation.rsplit("/", 1)[1]
        lock_key = f"{LOCK_PREFIX}{workspace}:{conversation_id}"
        assert await redis_client.get(lock_key) is not None

        second = ChatStream(two, token)
        await second.send(start=chat_pb2.StartChat(conversation=conversation))
        await second.failure(grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_BUSY")

        await first.send(end=chat_pb2.EndChat())
        await first.rest()
        assert await redis_client.get(lock_key) is None
        third = ChatStream(two, token)
        resumed = await third.start(conversation=conversation)
        assert resumed.resumed
        await third.send(end=chat_pb2.EndChat())
        await third.rest()

        # A server that died holding the lock: its lock (another owner, no renewal)
        # refuses streams until it expires, then frees the conversation.
        await redis_client.set(lock_key, "stream-of-a-dead-server", px=800)
        refused = ChatStream(one, token)
        await refused.send(start=chat_pb2.StartChat(conversation=conversation))
        await refused.failure(grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_BUSY")
        await asyncio.sleep(1.0)
        freed = ChatStream(one, token)
        assert (await freed.start(conversation=conversation)).resumed
        await freed.send(end=chat_pb2.EndChat())
        await freed.rest()


async def test_a_settings_change_reaches_the_other_server_at_once(
    tmp_path: Path, shared_database: str, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with replicas(tmp_path, shared_database, redis_url, cache_ttl_seconds=LONG_TTL) as (
        one,
        two,
    ):
        workspace, admin = await limited(one, concurrent_chat_streams=1)
        held = await open_chat(two, two.md(admin), ws_name(workspace))  # two caches the quota
        cached = await redis_client.get(f"fenlo:cache:workspace:{workspace}")
        assert cached is not None and b'"concurrent_chat_streams": 1' in cached
        with pytest.raises(aio.AioRpcError):
            await open_chat(two, two.md(admin), ws_name(workspace))

        await one.workspaces.UpdateWorkspace(
            workspace_pb2.UpdateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(
                    name=ws_name(workspace),
                    quotas=workspace_pb2.WorkspaceQuotas(concurrent_chat_streams=2),
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["quotas.concurrent_chat_streams"]),
            ),
            metadata=one.md(one.platform_token),
        )
        # Server two has the old quota in its own cache for minutes; the invalidation
        # (pub/sub) drops it, so its next read finds the new quota.
        second = None
        for _ in range(200):  # up to ~10 s: a loaded machine is slow, a stale cache is forever
            with contextlib.suppress(aio.AioRpcError):
                second = await open_chat(two, two.md(admin), ws_name(workspace))
                break
            await asyncio.sleep(0.05)
        assert second is not None, "server two still enforces the old quota"
        await end_chat(second)
        await end_chat(held)


async def test_api_key_cache_holds_no_secret_and_a_deleted_key_stops_everywhere(
    tmp_path: Path, shared_database: str, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with replicas(tmp_path, shared_database, redis_url, cache_ttl_seconds=LONG_TTL) as (
        one,
        two,
    ):
        workspace, _ = await one.create_workspace("Keys")
        key = await create_key(one, workspace)
        await get(one, workspace, key)
        await get(two, workspace, key)
        stored = await redis_client.get(f"fenlo:cache:apikey:{apikeys.hash_key(key)}")
        assert stored is not None and workspace.encode() in stored
        assert key.encode() not in stored
        async for name in redis_client.scan_iter(match="fenlo:cache:apikey:*", count=1000):
            assert key.encode() not in name

        listed = await one.workspaces.ListApiKeys(
            workspace_pb2.ListApiKeysRequest(parent=ws_name(workspace)),
            metadata=one.md(one.platform_token),
        )
        await one.workspaces.DeleteApiKey(
            workspace_pb2.DeleteApiKeyRequest(name=listed.api_keys[0].name),
            metadata=one.md(one.platform_token),
        )
        assert await redis_client.get(f"fenlo:cache:apikey:{apikeys.hash_key(key)}") is None

        async def refused_on_two() -> bool:
            try:
                await get(two, workspace, key)
            except aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                return True
            return False

        for _ in range(200):  # up to ~10 s: a loaded machine is slow, a stale cache is forever
            if await refused_on_two():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the deleted key still works on server two")
