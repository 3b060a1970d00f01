"""Workspace quotas through the real server: requests per minute for the workspace and
for each principal, concurrent Chat streams, deleted workspaces, and operators.

The limiter is an in-process token bucket holding ``per_minute`` tokens that refill
at ``per_minute / 60`` a second, so with quotas of a handful of requests a test
exhausts them in milliseconds and never waits for a refill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio

from fenlo.v1 import chat_pb2, conversation_pb2, workspace_pb2
from tests.helpers import Api, RichError, rich_error

Metadata = tuple[tuple[str, str], ...]
ChatCall = aio.StreamStreamCall[chat_pb2.ChatRequest, chat_pb2.ChatResponse]


def ws_name(workspace_id: str) -> str:
    return f"workspaces/{workspace_id}"


async def create_limited(api: Api, **quotas: int) -> tuple[str, str]:
    """A workspace with these quotas (set by the platform admin) and its admin token."""
    return await api.create_workspace("Limited", quotas=workspace_pb2.WorkspaceQuotas(**quotas))


async def get(api: Api, workspace_id: str, credential: str) -> workspace_pb2.Workspace:
    return await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=ws_name(workspace_id)),
        metadata=api.md(credential),
    )


async def refused_get(api: Api, workspace_id: str, credential: str) -> RichError:
    with pytest.raises(aio.AioRpcError) as info:
        await get(api, workspace_id, credential)
    return rich_error(info.value)


async def create_key(
    api: Api, workspace_id: str, role: workspace_pb2.Role.ValueType = workspace_pb2.ROLE_SERVICE
) -> str:
    """An API key made by the platform admin (whose calls are never counted)."""
    created = await api.workspaces.CreateApiKey(
        workspace_pb2.CreateApiKeyRequest(
            parent=ws_name(workspace_id), api_key=workspace_pb2.ApiKey(roles=[role])
        ),
        metadata=api.md(api.platform_token),
    )
    return created.secret


def assert_rate_limited(error: RichError, subject: str, quota: str, per_minute: int) -> None:
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert error.reason == "RATE_LIMITED", error
    assert error.retry_delay is not None, "no RetryInfo"
    # One token refills in 60/per_minute seconds; the bucket is (nearly) empty.
    assert 0 < error.retry_delay <= 60 / per_minute + 0.5, error.retry_delay
    assert error.quota_violations == [(subject, quota)], error.quota_violations


# ---------------------------------------------------------------- chat streams


async def open_chat(api: Api, md: Metadata, parent: str) -> ChatCall:
    """An open Chat stream whose session has started; a refusal raises AioRpcError."""
    call = api.chat.Chat(metadata=md)
    # Write and read at once: a server that refuses the stream answers before it
    # reads anything, and a write that loses that race must not hide its status.
    writing = asyncio.ensure_future(
        call.write(chat_pb2.ChatRequest(start=chat_pb2.StartChat(parent=parent)))
    )
    try:
        first = await call.read()
    except aio.AioRpcError:
        call.cancel()
        raise
    finally:
        with contextlib.suppress(asyncio.InvalidStateError, aio.AioRpcError):
            await writing
    assert isinstance(first, chat_pb2.ChatResponse), first
    assert first.WhichOneof("kind") == "session_started", first
    return call


async def end_chat(call: ChatCall) -> None:
    """Close the stream from the client side and read it to its end."""
    await call.write(chat_pb2.ChatRequest(end=chat_pb2.EndChat()))
    await call.done_writing()
    while await call.read() is not aio.EOF:
        pass
    assert await call.code() == grpc.StatusCode.OK


# ---------------------------------------------------------------- requests per minute


async def test_workspace_requests_per_minute(api: Api) -> None:
    limited, admin = await create_limited(api, requests_per_minute=5)
    other, other_admin = await create_limited(api, requests_per_minute=5)
    agent_key = await create_key(api, limited, workspace_pb2.ROLE_AGENT)

    # Five calls of any kind, by any principal of the workspace, use up the quota.
    await get(api, limited, admin)
    await api.conversations.ListConversations(
        conversation_pb2.ListConversationsRequest(parent=ws_name(limited)),
        metadata=api.md(admin),
    )
    await get(api, limited, agent_key)
    await get(api, limited, api.token(limited, "service", subject="someone-else"))
    await api.workspaces.ListWorkspaces(
        workspace_pb2.ListWorkspacesRequest(), metadata=api.md(admin)
    )
    # The sixth is refused, whoever makes it.
    for credential in (admin, agent_key, api.token(limited, "agent", subject="fresh")):
        error = await refused_get(api, limited, credential)
        assert_rate_limited(error, ws_name(limited), "requests_per_minute", 5)
    with pytest.raises(aio.AioRpcError) as info:
        await open_chat(api, api.md(admin), ws_name(limited))
    assert_rate_limited(rich_error(info.value), ws_name(limited), "requests_per_minute", 5)

    # Another workspace has its own quota.
    for _ in range(5):
        await get(api, other, other_admin)
    error = await refused_get(api, other, other_admin)
    assert_rate_limited(error, ws_name(other), "requests_per_minute", 5)


async def test_refused_calls_do_not_spend_the_quota(api: Api) -> None:
    limited, _ = await create_limited(api, requests_per_minute=3)
    agent = api.token(limited, "agent")
    # Unauthenticated and role-refused calls never reach the limiter...
    for _ in range(5):
        with pytest.raises(aio.AioRpcError) as info:
            await api.workspaces.ListApiKeys(
                workspace_pb2.ListApiKeysRequest(parent=ws_name(limited)),
                metadata=api.md(agent),
            )
        assert rich_error(info.value).reason == "PERMISSION_DENIED_ROLE"
    # ...so the quota is whole.
    for _ in range(3):
        await get(api, limited, agent)
    error = await refused_get(api, limited, agent)
    assert_rate_limited(error, ws_name(limited), "requests_per_minute", 3)


async def test_a_chat_stream_counts_once(api: Api) -> None:
    limited, admin = await create_limited(api, requests_per_minute=3)
    md = api.md(admin)
    call = await open_chat(api, md, ws_name(limited))
    for i in range(4):  # turns on an open stream are not requests
        await call.write(
            chat_pb2.ChatRequest(user_message=chat_pb2.UserMessage(text=f"message {i}"))
        )
        while True:
            response = await call.read()
            assert isinstance(response, chat_pb2.ChatResponse), response
            assert response.WhichOneof("kind") != "error", response
            if response.WhichOneof("kind") == "turn_completed":
                break
    await end_chat(call)
    await get(api, limited, admin)
    await get(api, limited, admin)
    error = await refused_get(api, limited, admin)
    assert_rate_limited(error, ws_name(limited), "requests_per_minute", 3)


async def test_principal_requests_per_minute(api: Api) -> None:
    limited, _ = await create_limited(api, requests_per_minute=100, principal_requests_per_minute=3)
    elsewhere, _ = await create_limited(
        api, requests_per_minute=100, principal_requests_per_minute=3
    )
    key_1 = await create_key(api, limited)
    key_2 = await create_key(api, limited)
    key_1_name = await _key_name(api, limited, key_1)

    for _ in range(3):
        await get(api, limited, key_1)
    error = await refused_get(api, limited, key_1)
    assert_rate_limited(
        error, f"apikey:{key_1_name.rsplit('/', 1)[1]}", "principal_requests_per_minute", 3
    )
    # Another key of the same workspace still works, up to its own limit.
    for _ in range(3):
        await get(api, limited, key_2)
    assert (await refused_get(api, limited, key_2)).reason == "RATE_LIMITED"

    # Token subjects are limited one by one too, whatever their role...
    alice_admin = api.token(limited, "admin", subject="alice")
    alice_agent = api.token(limited, "agent", subject="alice")
    await get(api, limited, alice_admin)
    await get(api, limited, alice_agent)
    await get(api, limited, alice_admin)
    error = await refused_get(api, limited, alice_agent)
    assert_rate_limited(error, "alice", "principal_requests_per_minute", 3)
    bob = api.token(limited, "agent", subject="bob")
    for _ in range(3):
        await get(api, limited, bob)
    # ...and only within their workspace: "alice" of another workspace is someone else.
    await get(api, elsewhere, api.token(elsewhere, "admin", subject="alice"))


async def _key_name(api: Api, workspace_id: str, secret: str) -> str:
    keys = await api.workspaces.ListApiKeys(
        workspace_pb2.ListApiKeysRequest(parent=ws_name(workspace_id)),
        metadata=api.md(api.platform_token),
    )
    (match,) = [k.name for k in keys.api_keys if secret.startswith(k.prefix)]
    return match


async def test_platform_admins_are_not_limited(api: Api) -> None:
    limited, admin = await create_limited(
        api, requests_per_minute=2, principal_requests_per_minute=1
    )
    # Neither the workspace's limit nor a principal's applies to an operator.
    for _ in range(10):
        got = await get(api, limited, api.platform_token)
        assert got.quotas.requests_per_minute == 2
    # A platform admin whose token also names the workspace is not limited either.
    operator = api.token(limited, "platform_admin", subject="operator")
    for _ in range(5):
        await get(api, limited, operator)
    # The operators' calls took nothing from the workspace's own quota.
    await get(api, limited, admin)
    await get(api, limited, api.token(limited, "agent", subject="other"))
    error = await refused_get(api, limited, api.token(limited, "agent", subject="third"))
    assert_rate_limited(error, ws_name(limited), "requests_per_minute", 2)
    # Even now, the operator gets through.
    await get(api, limited, api.platform_token)


async def test_raised_quota_applies_at_once(api: Api) -> None:
    limited, admin = await create_limited(api, requests_per_minute=2)
    await get(api, limited, admin)
    await get(api, limited, admin)
    assert (await refused_get(api, limited, admin)).reason == "RATE_LIMITED"
    await api.workspaces.UpdateWorkspace(
        workspace_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                name=ws_name(limited),
                quotas=workspace_pb2.WorkspaceQuotas(requests_per_minute=600),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["quotas.requests_per_minute"]),
        ),
        metadata=api.md(api.platform_token),
    )
    # 600 a minute refills 10 tokens a second: the next call soon passes.
    deadline = time.monotonic() + 2.0
    while True:
        try:
            await get(api, limited, admin)
            break
        except aio.AioRpcError as exc:
            assert rich_error(exc).reason == "RATE_LIMITED"
            assert time.monotonic() < deadline, "the raised quota never applied"
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- concurrent chat streams


async def test_concurrent_chat_streams(api: Api) -> None:
    limited, admin = await create_limited(api, concurrent_chat_streams=2)
    other, other_admin = await create_limited(api, concurrent_chat_streams=2)
    md = api.md(admin)
    parent = ws_name(limited)
    first = await open_chat(api, md, parent)
    second = await open_chat(api, md, parent)
    opened: list[ChatCall] = []
    try:
        # A third stream of the workspace, even by another principal, is refused.
        for credential in (admin, await create_key(api, limited)):
            with pytest.raises(aio.AioRpcError) as info:
                opened.append(await open_chat(api, api.md(credential), parent))
            error = rich_error(info.value)
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert error.reason == "CONCURRENCY_LIMITED", error
            assert error.quota_violations == [(parent, "concurrent_chat_streams")]
            assert error.retry_delay is not None
            assert error.retry_delay > 0
        # Unary calls are not streams: still fine.
        await get(api, limited, admin)
        # Another workspace has its own streams.
        opened.append(await open_chat(api, api.md(other_admin), ws_name(other)))

        # Ending one stream frees its slot.
        await end_chat(first)
        third = await open_chat(api, md, parent)
        opened.append(third)
        with pytest.raises(aio.AioRpcError) as info:
            opened.append(await open_chat(api, md, parent))
        assert rich_error(info.value).reason == "CONCURRENCY_LIMITED"

        # So does a stream the client cancels (the server notices shortly after).
        second.cancel()
        fourth = await _open_when_free(api, md, parent)
        opened.append(fourth)
    finally:
        for call in (first, second, *opened):
            call.cancel()


async def _open_when_free(api: Api, md: Metadata, parent: str) -> ChatCall:
    deadline = time.monotonic() + 3.0
    while True:
        try:
            return await open_chat(api, md, parent)
        except aio.AioRpcError as exc:
            assert rich_error(exc).reason == "CONCURRENCY_LIMITED"
            assert time.monotonic() < deadline, "a cancelled stream kept its slot"
            await asyncio.sleep(0.05)


async def test_refused_stream_does_not_hold_a_slot(api: Api) -> None:
    """A stream refused for another reason (here: a closed conversation) frees its slot."""
    limited, admin = await create_limited(api, concurrent_chat_streams=1)
    md = api.md(admin)
    conversation = await api.create_conversation(
        limited, admin, state=conversation_pb2.CONVERSATION_STATE_CLOSED
    )
    for _ in range(3):
        call = api.chat.Chat(metadata=md)
        await call.write(
            chat_pb2.ChatRequest(start=chat_pb2.StartChat(conversation=conversation.name))
        )
        with pytest.raises(aio.AioRpcError) as info:
            await call.read()
        assert rich_error(info.value).reason == "CONVERSATION_CLOSED"
    call = await open_chat(api, md, ws_name(limited))
    await end_chat(call)


# ---------------------------------------------------------------- deleted workspaces


@pytest.mark.parametrize("deleted_by", ["platform", "own-admin"])
async def test_deleted_workspace_credentials_stop_working(api: Api, deleted_by: str) -> None:
    workspace_id, admin = await api.create_workspace("Doomed")
    survivor, survivor_admin = await api.create_workspace("Survivor")
    agent = api.token(workspace_id, "agent", subject="agent-7")
    key = await create_key(api, workspace_id)
    await get(api, workspace_id, key)  # cached by the authenticator from now on
    await get(api, workspace_id, agent)

    deleter = api.platform_token if deleted_by == "platform" else admin
    await api.workspaces.DeleteWorkspace(
        workspace_pb2.DeleteWorkspaceRequest(name=ws_name(workspace_id)),
        metadata=api.md(deleter),
    )

    for token in (admin, agent):
        error = await refused_get(api, workspace_id, token)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "WORKSPACE_NOT_ACTIVE",
        ), error
        with pytest.raises(aio.AioRpcError) as info:
            await api.conversations.CreateConversation(
                conversation_pb2.CreateConversationRequest(parent=ws_name(workspace_id)),
                metadata=api.md(token),
            )
        assert rich_error(info.value).reason == "WORKSPACE_NOT_ACTIVE"
        with pytest.raises(aio.AioRpcError) as info:
            await open_chat(api, api.md(token), ws_name(workspace_id))
        assert rich_error(info.value).reason == "WORKSPACE_NOT_ACTIVE"

    # The workspace's API keys were deleted with it.
    error = await refused_get(api, workspace_id, key)
    assert (error.code, error.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_INVALID",
    ), error

    # Other workspaces carry on; the platform admin sees the workspace is gone.
    await get(api, survivor, survivor_admin)
    with pytest.raises(aio.AioRpcError) as info:
        await get(api, workspace_id, api.platform_token)
    assert rich_error(info.value).reason == "RESOURCE_NOT_FOUND"


async def test_token_of_a_workspace_that_never_existed(api: Api) -> None:
    token = api.token("nosuchworkspace0", "admin")
    error = await refused_get(api, "nosuchworkspace0", token)
    assert (error.code, error.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "WORKSPACE_NOT_ACTIVE",
    )


async def test_a_limited_principal_does_not_drain_the_workspace(api: Api) -> None:
    """Requests refused by a principal's own limit must not spend the workspace's
    quota, or one runaway client would lock every other one out."""
    limited, _ = await create_limited(api, requests_per_minute=10, principal_requests_per_minute=2)
    noisy = await create_key(api, limited)
    quiet = await create_key(api, limited)
    await get(api, limited, noisy)
    await get(api, limited, noisy)
    for _ in range(20):
        error = await refused_get(api, limited, noisy)
        assert error.quota_violations[0][1] == "principal_requests_per_minute", error
    await get(api, limited, quiet)
    await get(api, limited, quiet)
