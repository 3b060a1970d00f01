"""ConversationService: create, get, list with filters and pages, update masks, delete,
messages, metadata limits and request_id idempotency, over a real channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc import aio
from sqlalchemy import select

from fenlo.v1 import chat_pb2, conversation_pb2
from fenlo_server.storage.models import MessageRow
from tests.helpers import Api, RichError, rich_error

C = conversation_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def expect_error(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str, case: object = None
) -> RichError:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    error = rich_error(info.value)
    assert (error.code, error.reason, error.domain) == (code, reason, "fenlo.ai"), (case, error)
    return error


def fields(error: RichError) -> list[str]:
    return [f for f, _ in error.violations]


async def chat(api: Api, token: str, start: chat_pb2.StartChat, texts: list[str]) -> str:
    """Run one Chat stream with ``texts`` as turns; return the conversation's name."""
    call = api.chat.Chat(metadata=api.md(token), timeout=30)
    await call.write(chat_pb2.ChatRequest(start=start))
    for text in texts:
        await call.write(chat_pb2.ChatRequest(user_message=chat_pb2.UserMessage(text=text)))
    await call.done_writing()
    responses = [r async for r in call]
    assert responses[0].WhichOneof("kind") == "session_started"
    assert sum(r.WhichOneof("kind") == "turn_completed" for r in responses) == len(texts)
    return responses[0].session_started.conversation.name


async def list_messages(api: Api, token: str, parent: str) -> list[C.Message]:
    page = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=parent, page_size=1000), metadata=api.md(token)
    )
    assert not page.next_page_token
    return list(page.messages)


async def list_names(api: Api, token: str, parent: str, **filters: Any) -> list[str]:
    page = await api.conversations.ListConversations(
        C.ListConversationsRequest(parent=parent, page_size=1000, **filters),
        metadata=api.md(token),
    )
    assert not page.next_page_token
    return [c.name for c in page.conversations]


async def update(
    api: Api, token: str, conversation: C.Conversation, paths: list[str] | None
) -> C.Conversation:
    request = C.UpdateConversationRequest(conversation=conversation)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return await api.conversations.UpdateConversation(request, metadata=api.md(token))


# Create and Get


async def test_create_with_fields_and_get(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    created = await api.create_conversation(
        workspace_id,
        token,
        channel=C.CHANNEL_WHATSAPP,
        external_contact_id="+351912345678",
        metadata={"campaign": "spring", "ünïcode": "välue"},
    )
    prefix = f"workspaces/{workspace_id}/conversations/"
    assert created.name.startswith(prefix) and created.name.removeprefix(prefix).isalnum()
    assert created.channel == C.CHANNEL_WHATSAPP
    assert created.external_contact_id == "+351912345678"
    assert dict(created.metadata) == {"campaign": "spring", "ünïcode": "välue"}
    assert created.state == C.CONVERSATION_STATE_OPEN
    assert created.message_count == 0
    assert not created.HasField("last_message_time")
    assert created.HasField("create_time") and created.create_time == created.update_time

    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=created.name), metadata=api.md(token)
    )
    assert got == created
    # Agents and services may read it too; the platform admin as well.
    for reader in (api.token(workspace_id, "agent"), api.token(workspace_id, "service")):
        assert (
            await api.conversations.GetConversation(
                C.GetConversationRequest(name=created.name), metadata=api.md(reader)
            )
        ) == created


async def test_create_defaults_and_ignored_output_fields(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    created = await api.create_conversation(
        workspace_id,
        token,
        name=f"workspaces/{workspace_id}/conversations/mine",
        message_count=42,
    )
    assert created.channel == C.CHANNEL_API
    assert created.state == C.CONVERSATION_STATE_OPEN
    assert created.external_contact_id == ""
    assert dict(created.metadata) == {}
    assert created.message_count == 0
    assert not created.name.endswith("/mine")

    handed = await api.create_conversation(
        workspace_id, token, state=C.CONVERSATION_STATE_HANDED_OFF, channel=C.CHANNEL_SMS
    )
    assert handed.state == C.CONVERSATION_STATE_HANDED_OFF
    assert handed.channel == C.CHANNEL_SMS


async def test_create_refuses_invalid_fields(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    error = await expect_error(
        api.create_conversation(
            workspace_id,
            token,
            channel=99,
            state=42,
            external_contact_id="x" * 257,
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert sorted(fields(error)) == [
        "conversation.channel",
        "conversation.external_contact_id",
        "conversation.state",
    ]
    assert await list_names(api, token, f"workspaces/{workspace_id}") == []


async def test_metadata_limits(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    parent = f"workspaces/{workspace_id}"
    # At the limits exactly: accepted.
    at_limit = {f"k{i:02}": "v" for i in range(63)} | {"k" * 128: "v" * 2048}
    created = await api.create_conversation(workspace_id, token, metadata=at_limit)
    assert dict(created.metadata) == at_limit

    too_many = {f"k{i}": "v" for i in range(65)}
    error = await expect_error(
        api.create_conversation(workspace_id, token, metadata=too_many),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert fields(error) == ["conversation.metadata"]

    error = await expect_error(
        api.create_conversation(
            workspace_id, token, metadata={"k" * 129: "v", "ok": "v" * 2049, "": "empty key"}
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert len(error.violations) == 3
    assert all(f.startswith("conversation.metadata[") for f in fields(error))
    assert any("'ok'" in f for f in fields(error))
    assert await list_names(api, token, parent) == [created.name]

    # The same limits apply to an update, which then changes nothing.
    error = await expect_error(
        update(api, token, C.Conversation(name=created.name, metadata=too_many), ["metadata"]),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert fields(error) == ["conversation.metadata"]
    error = await expect_error(
        update(api, token, C.Conversation(name=created.name, metadata={"k": "v" * 2049}), None),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert fields(error) == ["conversation.metadata['k']"]
    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=created.name), metadata=api.md(token)
    )
    assert dict(got.metadata) == at_limit


# List


async def test_list_filters_newest_first(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    parent = f"workspaces/{workspace_id}"
    c1 = await api.create_conversation(
        workspace_id, token, channel=C.CHANNEL_WEB, external_contact_id="alice"
    )
    c2 = await api.create_conversation(
        workspace_id,
        token,
        channel=C.CHANNEL_PHONE,
        external_contact_id="bob",
        state=C.CONVERSATION_STATE_HANDED_OFF,
    )
    c3 = await api.create_conversation(
        workspace_id,
        token,
        channel=C.CHANNEL_WEB,
        external_contact_id="bob",
        state=C.CONVERSATION_STATE_CLOSED,
    )
    c4 = await api.create_conversation(workspace_id, token)
    # Another workspace's conversations never show up.
    other_id, other_token = await api.create_workspace("Other")
    await api.create_conversation(other_id, other_token, channel=C.CHANNEL_WEB)

    async def names(**filters: Any) -> list[str]:
        return await list_names(api, token, parent, **filters)

    assert await names() == [c4.name, c3.name, c2.name, c1.name]
    assert await names(state=C.CONVERSATION_STATE_OPEN) == [c4.name, c1.name]
    assert await names(state=C.CONVERSATION_STATE_HANDED_OFF) == [c2.name]
    assert await names(state=C.CONVERSATION_STATE_CLOSED) == [c3.name]
    assert await names(channel=C.CHANNEL_WEB) == [c3.name, c1.name]
    assert await names(channel=C.CHANNEL_API) == [c4.name]
    assert await names(channel=C.CHANNEL_EMAIL) == []
    assert await names(external_contact_id="bob") == [c3.name, c2.name]
    assert await names(external_contact_id="bob", channel=C.CHANNEL_WEB) == [c3.name]
    assert await names(external_contact_id="carol") == []
    # create_time_start is inclusive, create_time_end exclusive.
    assert await names(create_time_start=c2.create_time) == [c4.name, c3.name, c2.name]
    assert await names(create_time_end=c3.create_time) == [c2.name, c1.name]
    assert await names(create_time_start=c2.create_time, create_time_end=c4.create_time) == [
        c3.name,
        c2.name,
    ]
    assert await names(
        create_time_start=c2.create_time,
        create_time_end=c4.create_time,
        state=C.CONVERSATION_STATE_CLOSED,
    ) == [c3.name]
    assert await names(create_time_start=c4.create_time, create_time_end=c1.create_time) == []


async def test_list_pages_and_tokens_are_bound_to_the_filters(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    parent = f"workspaces/{workspace_id}"
    web = [
        (await api.create_conversation(workspace_id, token, channel=C.CHANNEL_WEB)).name
        for _ in range(5)
    ]
    await api.create_conversation(workspace_id, token, channel=C.CHANNEL_SMS)

    seen: list[str] = []
    page_token = ""
    pages = 0
    while True:
        page = await api.conversations.ListConversations(
            C.ListConversationsRequest(
                parent=parent, channel=C.CHANNEL_WEB, page_size=2, page_token=page_token
            ),
            metadata=api.md(token),
        )
        pages += 1
        seen += [c.name for c in page.conversations]
        page_token = page.next_page_token
        if not page_token:
            break
        assert len(page.conversations) == 2
        tokens_of_filters = page_token
    assert pages == 3
    assert seen == list(reversed(web))

    # The page size may change between pages; any other parameter may not.
    page = await api.conversations.ListConversations(
        C.ListConversationsRequest(
            parent=parent, channel=C.CHANNEL_WEB, page_size=10, page_token=tokens_of_filters
        ),
        metadata=api.md(token),
    )
    assert [c.name for c in page.conversations] == list(reversed(web))[4:]

    other_id, other_token = await api.create_workspace("Other")
    later = timestamp_pb2.Timestamp(seconds=1)
    for request, caller in [
        (C.ListConversationsRequest(parent=parent), token),
        (C.ListConversationsRequest(parent=parent, channel=C.CHANNEL_SMS), token),
        (
            C.ListConversationsRequest(
                parent=parent, channel=C.CHANNEL_WEB, state=C.CONVERSATION_STATE_OPEN
            ),
            token,
        ),
        (
            C.ListConversationsRequest(
                parent=parent, channel=C.CHANNEL_WEB, external_contact_id="x"
            ),
            token,
        ),
        (
            C.ListConversationsRequest(
                parent=parent, channel=C.CHANNEL_WEB, create_time_start=later
            ),
            token,
        ),
        (
            C.ListConversationsRequest(parent=parent, channel=C.CHANNEL_WEB, create_time_end=later),
            token,
        ),
        # The platform admin is another caller, and another workspace another scope.
        (C.ListConversationsRequest(parent=parent, channel=C.CHANNEL_WEB), api.platform_token),
        (
            C.ListConversationsRequest(parent=f"workspaces/{other_id}", channel=C.CHANNEL_WEB),
            other_token,
        ),
    ]:
        request.page_token = tokens_of_filters
        error = await expect_error(
            api.conversations.ListConversations(request, metadata=api.md(caller)),
            INVALID,
            "PAGE_TOKEN_INVALID",
        )
        assert fields(error) == ["page_token"]
    # Nor is a ListConversations token a ListMessages token.
    await expect_error(
        api.conversations.ListMessages(
            C.ListMessagesRequest(parent=web[0], page_token=tokens_of_filters),
            metadata=api.md(token),
        ),
        INVALID,
        "PAGE_TOKEN_INVALID",
    )


async def test_list_refuses_invalid_parameters(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    error = await expect_error(
        api.conversations.ListConversations(
            C.ListConversationsRequest(
                parent=f"workspaces/{workspace_id}",
                state=17,
                channel=99,
                external_contact_id="x" * 257,
                create_time_start=timestamp_pb2.Timestamp(seconds=0, nanos=-1),
                create_time_end=timestamp_pb2.Timestamp(seconds=10**12),
            ),
            metadata=api.md(token),
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert sorted(fields(error)) == [
        "channel",
        "create_time_end",
        "create_time_start",
        "external_contact_id",
        "state",
    ]
    error = await expect_error(
        api.conversations.ListConversations(
            C.ListConversationsRequest(parent=f"workspaces/{workspace_id}", page_size=-1),
            metadata=api.md(token),
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert fields(error) == ["page_size"]
    error = await expect_error(
        api.conversations.ListConversations(
            C.ListConversationsRequest(parent=f"workspaces/{workspace_id}", page_token="nope"),
            metadata=api.md(token),
        ),
        INVALID,
        "PAGE_TOKEN_INVALID",
    )
    assert fields(error) == ["page_token"]


# Update


async def test_update_metadata_and_state_with_masks(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    created = await api.create_conversation(
        workspace_id, token, channel=C.CHANNEL_WEB, external_contact_id="c", metadata={"a": "1"}
    )
    name = created.name

    changed = await update(
        api,
        token,
        C.Conversation(name=name, metadata={"b": "2"}, state=C.CONVERSATION_STATE_CLOSED),
        ["metadata"],
    )
    assert dict(changed.metadata) == {"b": "2"}
    assert changed.state == C.CONVERSATION_STATE_OPEN  # not in the mask
    assert changed.update_time.ToDatetime() >= created.update_time.ToDatetime()
    assert changed.create_time == created.create_time

    agent = api.token(workspace_id, "agent")
    changed = await update(
        api,
        agent,
        C.Conversation(name=name, metadata={"c": "3"}, state=C.CONVERSATION_STATE_HANDED_OFF),
        ["state"],
    )
    assert changed.state == C.CONVERSATION_STATE_HANDED_OFF
    assert dict(changed.metadata) == {"b": "2"}

    # An empty mask means the updatable fields that are set.
    changed = await update(
        api, token, C.Conversation(name=name, state=C.CONVERSATION_STATE_OPEN), []
    )
    assert changed.state == C.CONVERSATION_STATE_OPEN
    assert dict(changed.metadata) == {"b": "2"}
    changed = await update(api, token, C.Conversation(name=name, metadata={"d": "4"}), None)
    assert dict(changed.metadata) == {"d": "4"}
    assert changed.state == C.CONVERSATION_STATE_OPEN

    # `*` replaces both; metadata left empty is cleared.
    changed = await update(
        api, token, C.Conversation(name=name, state=C.CONVERSATION_STATE_CLOSED), ["*"]
    )
    assert dict(changed.metadata) == {}
    assert changed.state == C.CONVERSATION_STATE_CLOSED
    # Immutable fields never change.
    assert (changed.channel, changed.external_contact_id) == (C.CHANNEL_WEB, "c")

    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=name), metadata=api.md(token)
    )
    assert got == changed


MASKS_REFUSED = [
    ["channel"],
    ["external_contact_id"],
    ["name"],
    ["message_count"],
    ["create_time"],
    ["analysis"],
    ["metadata", "channel"],
    ["metadata.campaign"],
    ["*", "state"],
    ["nonsense"],
]


async def test_update_refuses_other_paths(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    created = await api.create_conversation(workspace_id, token, channel=C.CHANNEL_WEB)
    for paths in MASKS_REFUSED:
        error = await expect_error(
            update(
                api,
                token,
                C.Conversation(
                    name=created.name,
                    channel=C.CHANNEL_SMS,
                    external_contact_id="x",
                    metadata={"campaign": "x"},
                    state=C.CONVERSATION_STATE_CLOSED,
                ),
                paths,
            ),
            INVALID,
            "UPDATE_MASK_INVALID",
            paths,
        )
        assert fields(error) == ["update_mask"], paths
    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=created.name), metadata=api.md(token)
    )
    assert got == created


async def test_update_refuses_unspecified_state_and_empty_update(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    created = await api.create_conversation(workspace_id, token)
    for conversation, paths in [
        (C.Conversation(name=created.name), ["state"]),
        (C.Conversation(name=created.name, metadata={"a": "b"}), ["*"]),
        (C.Conversation(name=created.name, state=7), ["state"]),
    ]:
        error = await expect_error(
            update(api, token, conversation, paths), INVALID, "INVALID_ARGUMENT"
        )
        assert fields(error) == ["conversation.state"]
    error = await expect_error(
        update(api, token, C.Conversation(name=created.name), []), INVALID, "UPDATE_MASK_INVALID"
    )
    assert fields(error) == ["update_mask"]
    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=created.name), metadata=api.md(token)
    )
    assert got == created


# Delete and messages


async def test_delete_removes_the_conversation_and_its_messages(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    name = await chat(
        api, token, chat_pb2.StartChat(parent=f"workspaces/{workspace_id}"), ["one", "two"]
    )
    kept = await chat(api, token, chat_pb2.StartChat(parent=f"workspaces/{workspace_id}"), ["x"])
    assert len(await list_messages(api, token, name)) == 4

    # Deleting is for admins only.
    await expect_error(
        api.conversations.DeleteConversation(
            C.DeleteConversationRequest(name=name),
            metadata=api.md(api.token(workspace_id, "agent")),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED_ROLE",
    )
    await api.conversations.DeleteConversation(
        C.DeleteConversationRequest(name=name), metadata=api.md(token)
    )
    for call in (
        api.conversations.GetConversation(
            C.GetConversationRequest(name=name), metadata=api.md(token)
        ),
        api.conversations.ListMessages(C.ListMessagesRequest(parent=name), metadata=api.md(token)),
        api.conversations.DeleteConversation(
            C.DeleteConversationRequest(name=name), metadata=api.md(token)
        ),
    ):
        error = await expect_error(call, NOT_FOUND, "RESOURCE_NOT_FOUND")
        assert error.metadata == {"resource": name}
    conversation_id = name.rsplit("/", 1)[1]
    async with api.app.db.unscoped("test: look for orphans") as session:
        orphans = await session.execute(
            select(MessageRow.id).where(MessageRow.conversation_id == conversation_id)
        )
        assert orphans.first() is None
    assert len(await list_messages(api, token, kept)) == 2
    assert await list_names(api, token, f"workspaces/{workspace_id}") == [kept]


async def test_list_messages_oldest_first_across_pages(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    texts = [f"question {i}" for i in range(4)]
    name = await chat(api, token, chat_pb2.StartChat(parent=f"workspaces/{workspace_id}"), texts)

    messages: list[C.Message] = []
    page_token = ""
    sizes = []
    while True:
        page = await api.conversations.ListMessages(
            C.ListMessagesRequest(parent=name, page_size=3, page_token=page_token),
            metadata=api.md(token),
        )
        sizes.append(len(page.messages))
        messages += page.messages
        page_token = page.next_page_token
        if not page_token:
            break
    assert sizes == [3, 3, 2]
    assert len({m.name for m in messages}) == 8
    assert all(m.name.startswith(name + "/messages/") for m in messages)
    roles = [m.role for m in messages]
    assert roles == [C.MESSAGE_ROLE_USER, C.MESSAGE_ROLE_ASSISTANT] * 4
    assert [m.text for m in messages[::2]] == texts
    assert all(m.text for m in messages[1::2])
    for user, assistant in zip(messages[::2], messages[1::2], strict=True):
        assert user.turn_id and user.turn_id == assistant.turn_id
        assert user.create_time.ToDatetime() <= assistant.create_time.ToDatetime()
    assert len({m.turn_id for m in messages}) == 4
    assert messages == await list_messages(api, token, name)

    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=name), metadata=api.md(token)
    )
    assert got.message_count == 8
    assert got.last_message_time == messages[-1].create_time

    # page_size 0 means the default (50); a negative one is refused.
    page = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=name), metadata=api.md(token)
    )
    assert len(page.messages) == 8 and not page.next_page_token
    error = await expect_error(
        api.conversations.ListMessages(
            C.ListMessagesRequest(parent=name, page_size=-5), metadata=api.md(token)
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert fields(error) == ["page_size"]

    # A token is bound to its conversation.
    first = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=name, page_size=1), metadata=api.md(token)
    )
    other = await api.create_conversation(workspace_id, token)
    await expect_error(
        api.conversations.ListMessages(
            C.ListMessagesRequest(parent=other.name, page_token=first.next_page_token),
            metadata=api.md(token),
        ),
        INVALID,
        "PAGE_TOKEN_INVALID",
    )
    empty = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=other.name), metadata=api.md(token)
    )
    assert list(empty.messages) == [] and not empty.next_page_token


# request_id


async def test_request_id_makes_create_idempotent(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    parent = f"workspaces/{workspace_id}"
    request_id = str(uuid.uuid4())
    request = C.CreateConversationRequest(
        parent=parent,
        conversation=C.Conversation(channel=C.CHANNEL_WEB, metadata={"a": "b"}),
        request_id=request_id,
    )
    first = await api.conversations.CreateConversation(request, metadata=api.md(token))
    again = await api.conversations.CreateConversation(request, metadata=api.md(token))
    assert again == first
    assert await list_names(api, token, parent) == [first.name]

    request.conversation.metadata["a"] = "changed"
    error = await expect_error(
        api.conversations.CreateConversation(request, metadata=api.md(token)),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_CONFLICT",
    )
    assert fields(error) == ["request_id"]
    assert await list_names(api, token, parent) == [first.name]

    # request_ids are per workspace: another workspace may use the same one.
    other_id, other_token = await api.create_workspace("Other")
    request.parent = f"workspaces/{other_id}"
    elsewhere = await api.conversations.CreateConversation(request, metadata=api.md(other_token))
    assert elsewhere.name.startswith(f"workspaces/{other_id}/")

    error = await expect_error(
        api.conversations.CreateConversation(
            C.CreateConversationRequest(parent=parent, request_id="42"), metadata=api.md(token)
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert fields(error) == ["request_id"]
    assert await list_names(api, token, parent) == [first.name]


async def test_concurrent_creates_with_one_request_id_make_one_conversation(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    parent = f"workspaces/{workspace_id}"
    request = C.CreateConversationRequest(parent=parent, request_id=str(uuid.uuid4()))
    results = await asyncio.gather(
        *(api.conversations.CreateConversation(request, metadata=api.md(token)) for _ in range(5))
    )
    assert len({r.name for r in results}) == 1
    assert await list_names(api, token, parent) == [results[0].name]


# Not found, other workspaces, names


async def test_missing_conversation_of_own_workspace_is_not_found(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    missing = f"workspaces/{workspace_id}/conversations/01doesnotexist"
    for call in (
        api.conversations.GetConversation(
            C.GetConversationRequest(name=missing), metadata=api.md(token)
        ),
        update(api, token, C.Conversation(name=missing, metadata={"a": "b"}), ["metadata"]),
        api.conversations.DeleteConversation(
            C.DeleteConversationRequest(name=missing), metadata=api.md(token)
        ),
        api.conversations.ListMessages(
            C.ListMessagesRequest(parent=missing), metadata=api.md(token)
        ),
    ):
        error = await expect_error(call, NOT_FOUND, "RESOURCE_NOT_FOUND")
        assert error.metadata == {"resource": missing}
    # A workspace that does not exist (only a platform admin can even ask).
    await expect_error(
        api.conversations.CreateConversation(
            C.CreateConversationRequest(parent="workspaces/01nosuchworkspace"),
            metadata=api.md(api.platform_token),
        ),
        NOT_FOUND,
        "RESOURCE_NOT_FOUND",
    )


async def test_another_workspaces_conversation_is_denied_before_lookup(api: Api) -> None:
    workspace_id, token = await api.create_workspace()
    other_id, other_token = await api.create_workspace("Other")
    theirs = await api.create_conversation(other_id, other_token)
    missing = f"workspaces/{other_id}/conversations/01doesnotexist"
    for name in (theirs.name, missing):
        for call in (
            api.conversations.GetConversation(
                C.GetConversationRequest(name=name), metadata=api.md(token)
            ),
            update(api, token, C.Conversation(name=name, metadata={"a": "b"}), ["metadata"]),
            api.conversations.DeleteConversation(
                C.DeleteConversationRequest(name=name), metadata=api.md(token)
            ),
            api.conversations.ListMessages(
                C.ListMessagesRequest(parent=name), metadata=api.md(token)
            ),
        ):
            await expect_error(
                call, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED_WORKSPACE"
            )
    for call in (
        api.conversations.CreateConversation(
            C.CreateConversationRequest(parent=f"workspaces/{other_id}"), metadata=api.md(token)
        ),
        api.conversations.ListConversations(
            C.ListConversationsRequest(parent=f"workspaces/{other_id}"), metadata=api.md(token)
        ),
    ):
        await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED_WORKSPACE")
    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=theirs.name), metadata=api.md(other_token)
    )
    assert got == theirs
    assert workspace_id != other_id


MALFORMED_NAMES = [
    "",
    "conversations/abc",
    "workspaces/abc",
    "workspaces/abc/conversations",
    "workspaces/abc/conversations/",
    "workspaces/abc/conversations/DEF",
    "workspaces/abc/apiKeys/def",
    "workspaces/abc/conversations/def/messages/ghi",
]


async def test_malformed_names_are_refused(api: Api) -> None:
    md = api.md(api.platform_token)
    for name in MALFORMED_NAMES:
        for call, field in (
            (
                api.conversations.GetConversation(C.GetConversationRequest(name=name), metadata=md),
                "name",
            ),
            (
                update(api, api.platform_token, C.Conversation(name=name), ["state"]),
                "conversation.name",
            ),
            (
                api.conversations.DeleteConversation(
                    C.DeleteConversationRequest(name=name), metadata=md
                ),
                "name",
            ),
            (
                api.conversations.ListMessages(C.ListMessagesRequest(parent=name), metadata=md),
                "parent",
            ),
            (
                api.conversations.CreateConversation(
                    C.CreateConversationRequest(parent=name + "x/y"), metadata=md
                ),
                "parent",
            ),
            (
                api.conversations.ListConversations(
                    C.ListConversationsRequest(parent=name + "x/y"), metadata=md
                ),
                "parent",
            ),
        ):
            error = await expect_error(call, INVALID, "RESOURCE_NAME_INVALID", name)
            assert fields(error) == [field], name
