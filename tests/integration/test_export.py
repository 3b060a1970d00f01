"""ExportConversations: exactly what the chat turns stored, in creation order,
batch by batch, with its filters; nothing of another workspace."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc import aio

from fenlo.v1 import conversation_pb2 as C
from fenlo_server.api import conversations as conversations_api
from tests.helpers import Api, rich_error
from tests.lifecycle_helpers import chat_turns


async def export(api: Api, token: str, **request: object) -> list[C.ExportConversationsResponse]:
    call = api.conversations.ExportConversations(
        C.ExportConversationsRequest(**request),  # type: ignore[arg-type]
        metadata=api.md(token),
        timeout=60,
    )
    return [response async for response in call]


async def stored(api: Api, token: str, name: str) -> tuple[C.Conversation, list[C.Message]]:
    conversation = await api.conversations.GetConversation(
        C.GetConversationRequest(name=name), metadata=api.md(token)
    )
    listed = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=name, page_size=1000), metadata=api.md(token)
    )
    return conversation, list(listed.messages)


async def test_export_streams_what_the_turns_stored_in_creation_order(api: Api) -> None:
    ws, admin = await api.create_workspace("Export")
    other, other_admin = await api.create_workspace("Export other")
    mark = uuid.uuid4().hex[:8]
    made = [
        await chat_turns(api, admin, ws, "ana", [f"Hi {mark} one", "Do you open on Sunday?"]),
        await chat_turns(api, admin, ws, "ben", [f"Hello {mark} two"]),
        await chat_turns(api, admin, ws, "ana", [f"Me again {mark} three"]),
    ]
    await chat_turns(api, other_admin, other, "ana", ["not yours"])
    parent = f"workspaces/{ws}"

    exported = await export(api, admin, parent=parent)

    assert [r.conversation.name for r in exported] == [c.name for c in made]
    for response, conversation in zip(exported, made, strict=True):
        want_conversation, want_messages = await stored(api, admin, conversation.name)
        assert response.conversation == want_conversation
        assert list(response.messages) == want_messages
        assert not response.continued
    first = exported[0].messages
    assert [m.role for m in first] == [C.MESSAGE_ROLE_USER, C.MESSAGE_ROLE_ASSISTANT] * 2
    assert first[0].analysis.HasField("sentiment")  # the annotations as stored
    assert mark in first[0].text

    by_contact = await export(api, admin, parent=parent, external_contact_id="ana")
    assert [r.conversation.name for r in by_contact] == [made[0].name, made[2].name]
    since = timestamp_pb2.Timestamp()
    since.CopyFrom(made[1].create_time)
    later = await export(api, admin, parent=parent, create_time_start=since)
    assert [r.conversation.name for r in later] == [made[1].name, made[2].name]
    before = await export(api, admin, parent=parent, create_time_end=since)
    assert [r.conversation.name for r in before] == [made[0].name]
    assert await export(api, admin, parent=parent, external_contact_id="nobody") == []
    theirs = await export(api, other_admin, parent=f"workspaces/{other}")
    assert len(theirs) == 1 and mark not in str(theirs[0])


async def test_export_reads_in_batches_and_splits_long_conversations(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = sqlite_api
    ws, admin = await api.create_workspace("Export batches")
    made = [
        await chat_turns(api, admin, ws, f"c{i}", [f"question {i}.{t}" for t in range(i + 1)])
        for i in range(3)
    ]
    monkeypatch.setattr(conversations_api, "EXPORT_CONVERSATIONS", 2)
    monkeypatch.setattr(conversations_api, "EXPORT_MESSAGES", 3)

    exported = await export(api, admin, parent=f"workspaces/{ws}")

    # 2, 4 and 6 messages: [2], [3, 1], [3, 3].
    assert [(r.conversation.name, len(r.messages), r.continued) for r in exported] == [
        (made[0].name, 2, False),
        (made[1].name, 3, False),
        (made[1].name, 1, True),
        (made[2].name, 3, False),
        (made[2].name, 3, True),
    ]
    for conversation in made:
        _, want = await stored(api, admin, conversation.name)
        got = [m for r in exported if r.conversation.name == conversation.name for m in r.messages]
        assert got == want


async def test_export_validates_and_needs_an_existing_workspace(api: Api) -> None:
    ws, admin = await api.create_workspace("Export invalid")
    with pytest.raises(aio.AioRpcError) as info:
        await export(
            api,
            admin,
            parent=f"workspaces/{ws}",
            external_contact_id="x" * 300,
            create_time_start=timestamp_pb2.Timestamp(seconds=1, nanos=-1),
        )
    error = rich_error(info.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in error.violations} == {"external_contact_id", "create_time_start"}
    with pytest.raises(aio.AioRpcError) as info:
        await export(api, api.platform_token, parent="workspaces/zz" + uuid.uuid4().hex[:12])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
