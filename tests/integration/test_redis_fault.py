"""Redis dies (or hangs) under two running servers and comes back: every RPC keeps working,
health and metrics show the degradation (the overall health stays SERVING), and
the servers reconnect by themselves, sharing their limits again.

The Redis here is a private redis-server on a free port (never the shared one),
killed and started again on the same port; it keeps nothing on disk, so it comes
back empty, as a restarted production Redis without persistence does.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from fenlo.v1 import conversation_pb2, workspace_pb2
from fenlo_server.metrics import REGISTRY
from tests.chat_helpers import ChatStream
from tests.conftest import PG_ENV, _sqlite_url
from tests.helpers import Api, rich_error
from tests.integration.test_ratelimit import get, ws_name
from tests.redis_helpers import eventually, health, private_redis, redis_health, replicas

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def shared_database(postgres_url: str | None, sqlite_template: Path, tmp_path: Path) -> str:
    if os.environ.get(PG_ENV) and postgres_url:
        return postgres_url
    return _sqlite_url(sqlite_template, tmp_path / "db")


def redis_up_metric() -> float | None:
    return REGISTRY.get_sample_value("fenlo_dependency_up", {"dependency": "redis"})


def fallbacks() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "fenlo_dependency_fallbacks":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def every_rpc(api: Api, workspace: str, token: str) -> None:
    """GetWorkspace, CreateConversation, a Chat turn and ListConversations, all OK."""
    await get(api, workspace, token)
    created = await api.create_conversation(workspace, token)
    chat = ChatStream(api, token)
    session = await chat.start(conversation=created.name)
    assert session.resumed
    await chat.say("Hello there")
    turn = await chat.turn()
    assert turn.completed.user_message
    chat.call.cancel()
    listed = await api.conversations.ListConversations(
        conversation_pb2.ListConversationsRequest(parent=ws_name(workspace)),
        metadata=api.md(token),
    )
    assert created.name in [c.name for c in listed.conversations]


async def both_redis_health(apis: tuple[Api, Api], status: int) -> bool:
    return all([await redis_health(api) == status for api in apis])


async def assert_shared_limit(one: Api, two: Api, quota: int) -> None:
    workspace, admin = await one.create_workspace(
        "Again", quotas=workspace_pb2.WorkspaceQuotas(requests_per_minute=quota)
    )
    for i in range(quota):
        await get(one if i % 2 else two, workspace, admin)
    for api in (one, two):
        with pytest.raises(aio.AioRpcError) as info:
            await get(api, workspace, admin)
        assert rich_error(info.value).code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_redis_down_and_back(tmp_path: Path, shared_database: str) -> None:
    async with (
        private_redis(tmp_path / "redis") as redis,
        replicas(tmp_path, shared_database, redis.url, redis_retry_seconds=1.0) as (one, two),
    ):
        apis = (one, two)
        assert await both_redis_health(apis, SERVING)
        assert redis_up_metric() == 1
        workspace, token = await one.create_workspace("Survivor")
        for api in apis:
            await every_rpc(api, workspace, token)
        await assert_shared_limit(one, two, 4)

        # A stream opened while Redis is there goes on after it died.
        live = ChatStream(one, token)
        await live.start(parent=ws_name(workspace))

        await redis.kill()
        before = fallbacks()
        for api in apis:
            await every_rpc(api, workspace, token)
        await live.say("Still there?")
        assert (await live.turn()).completed.user_message
        await eventually(
            lambda: both_redis_health(apis, NOT_SERVING), within=5, what="redis NOT_SERVING"
        )
        for api in apis:
            assert await health(api, "") == SERVING
        assert redis_up_metric() == 0
        assert fallbacks() > before
        for api in apis:  # and still, now that Redis is known to be down
            await every_rpc(api, workspace, token)

        await redis.start()  # the same port, empty
        await eventually(
            lambda: both_redis_health(apis, SERVING), within=10, what="redis SERVING again"
        )
        assert redis_up_metric() == 1
        await assert_shared_limit(one, two, 4)
        for api in apis:
            await every_rpc(api, workspace, token)
        await live.say("And now?")
        assert (await live.turn()).completed.user_message
        live.call.cancel()


async def timed_rpcs(api: Api, workspace: str, token: str) -> float:
    """every_rpc, bounded; the slowest single GetWorkspace of ten, in seconds."""
    slowest = 0.0
    for _ in range(10):
        started = time.monotonic()
        await api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=ws_name(workspace)),
            metadata=api.md(token),
            timeout=5,
        )
        slowest = max(slowest, time.monotonic() - started)
    await asyncio.wait_for(every_rpc(api, workspace, token), 30)
    return slowest


async def test_a_hung_redis_costs_no_more_than_its_timeout(
    tmp_path: Path, shared_database: str
) -> None:
    """A frozen Redis (SIGSTOP: connections open, no answers) is worse than a dead
    one: nothing refuses the connection. The short Redis timeouts keep every RPC
    working, each call bounded by a few of them, and the servers pick Redis up
    again when it answers."""
    async with (
        private_redis(tmp_path / "redis") as redis,
        replicas(tmp_path, shared_database, redis.url, redis_retry_seconds=1.0) as (one, two),
    ):
        apis = (one, two)
        workspace, token = await one.create_workspace("Frozen")
        for api in apis:
            await every_rpc(api, workspace, token)
        redis.pause()
        try:
            for api in apis:
                # A Redis call gives up after 0.25 s; then the server stops asking
                # Redis until its retry time, so most calls do not wait at all.
                assert await timed_rpcs(api, workspace, token) < 3.0
            await eventually(
                lambda: both_redis_health(apis, NOT_SERVING), within=10, what="redis NOT_SERVING"
            )
            for api in apis:
                assert await health(api, "") == SERVING
                assert await timed_rpcs(api, workspace, token) < 3.0
        finally:
            redis.resume()
        await eventually(
            lambda: both_redis_health(apis, SERVING), within=15, what="redis SERVING again"
        )
        await assert_shared_limit(one, two, 4)
        for api in apis:
            await every_rpc(api, workspace, token)
