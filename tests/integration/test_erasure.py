"""EraseContact: a contact's conversations, messages, leads and events leave no
trace in any table; other contacts and other workspaces keep theirs; a live
Chat stream on an erased conversation ends with NOT_FOUND."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from grpc import aio
from sqlalchemy import func, select

from fenlo.v1 import conversation_pb2 as C
from fenlo_server.storage.models import LeadRow, MessageRow, OutboxEventRow
from tests.chat_helpers import ChatStream
from tests.conftest import _sqlite_url, make_settings, start_app
from tests.helpers import Api, rich_error
from tests.lifecycle_helpers import chat_turns, found_in, table_dump


def marker() -> str:
    return "zq" + uuid.uuid4().hex[:12]


def texts(mark: str) -> list[str]:
    return [
        f"Hello, I am interested in the premium plan, reference {mark}.",
        f"My email is {mark}@example.com and my budget is $900, can you send a quote?",
    ]


async def erase(api: Api, token: str, workspace_id: str, contact: str) -> C.EraseContactResponse:
    return await api.conversations.EraseContact(
        C.EraseContactRequest(parent=f"workspaces/{workspace_id}", external_contact_id=contact),
        metadata=api.md(token),
    )


async def counts(api: Api, workspace_id: str) -> tuple[int, int, int]:
    async with api.app.db.workspace(workspace_id) as session:
        messages = (await session.execute(select(func.count()).select_from(MessageRow))).scalar()
        leads = (await session.execute(select(func.count()).select_from(LeadRow))).scalar()
        events = (await session.execute(select(func.count()).select_from(OutboxEventRow))).scalar()
    return int(messages or 0), int(leads or 0), int(events or 0)


async def test_erasure_leaves_no_trace_of_the_contact_in_any_table(api: Api) -> None:
    a, a_admin = await api.create_workspace("Erase A")
    b, b_admin = await api.create_workspace("Erase B")
    contact = f"crm-{uuid.uuid4().hex}"
    other = f"crm-{uuid.uuid4().hex}"
    marks = [marker(), marker()]
    other_mark, b_mark = marker(), marker()
    doomed = [await chat_turns(api, a_admin, a, contact, texts(m)) for m in marks]
    kept = await chat_turns(api, a_admin, a, other, texts(other_mark))
    # The same contact id in another workspace is another workspace's contact.
    await chat_turns(api, b_admin, b, contact, texts(b_mark))

    before = await table_dump(api.app.db, a)
    for needle in (*marks, contact, other_mark, other):
        assert found_in(before, needle), needle  # the scan sees what it looks for
    messages_before, leads_before, _ = await counts(api, a)
    b_before = await table_dump(api.app.db, b)

    erased = await erase(api, a_admin, a, contact)

    assert erased.conversations_deleted == 2
    assert erased.messages_deleted == 8  # two turns of user + assistant, twice
    assert erased.leads_deleted == 2
    assert erased.events_deleted > 0
    assert erased.streams_ended == 0
    assert len(erased.contact_hash) == 64
    after = await table_dump(api.app.db, a)
    for needle in (*marks, contact, *(c.name.split("/")[-1] for c in doomed)):
        assert found_in(after, needle) == [], needle
    messages_after, leads_after, _ = await counts(api, a)
    assert messages_after == messages_before - 8
    assert leads_after == leads_before - 2
    # The other contact keeps everything.
    assert found_in(after, other_mark) and found_in(after, other)
    listed = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=kept.name), metadata=api.md(a_admin)
    )
    assert len(listed.messages) == 4 and other_mark in listed.messages[0].text
    # Another workspace's rows did not change at all.
    assert await table_dump(api.app.db, b) == b_before
    assert found_in(b_before, b_mark) and found_in(b_before, contact)

    # One contact.erased event, with counts and the hash only.
    async with api.app.db.workspace(a) as session:
        events = (
            (
                await session.execute(
                    select(OutboxEventRow).where(OutboxEventRow.type == "contact.erased")
                )
            )
            .scalars()
            .all()
        )
    assert [e.payload for e in events] == [
        {"contact_hash": erased.contact_hash, "conversations": 2, "messages": 8, "leads": 2}
    ]

    # Erasing again finds nothing, and the hash is the same for the same contact.
    again = await erase(api, a_admin, a, contact)
    assert (again.conversations_deleted, again.messages_deleted, again.leads_deleted) == (0, 0, 0)
    assert again.contact_hash == erased.contact_hash
    assert (await erase(api, a_admin, a, other + "x")).contact_hash != erased.contact_hash
    for name in (c.name for c in doomed):
        with pytest.raises(aio.AioRpcError) as info:
            await api.conversations.GetConversation(
                C.GetConversationRequest(name=name), metadata=api.md(a_admin)
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_live_stream_on_an_erased_conversation_ends_with_not_found(api: Api) -> None:
    workspace, admin = await api.create_workspace("Erase live")
    contact = f"live-{uuid.uuid4().hex}"
    mark = marker()
    conversation = await chat_turns(api, admin, workspace, contact, texts(mark)[:1])
    chat = ChatStream(api, admin)
    await chat.start(conversation=conversation.name)

    erased = await erase(api, admin, workspace, contact)

    assert erased.streams_ended == 1
    error = await chat.failure(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert conversation.name in error.message
    assert found_in(await table_dump(api.app.db, workspace), mark) == []
    # The contact may start again afterwards: a new conversation, nothing of the old.
    fresh = await chat_turns(api, admin, workspace, contact, ["Hello again"])
    assert fresh.name != conversation.name


async def test_erase_contact_validates_its_request(api: Api) -> None:
    workspace, admin = await api.create_workspace("Erase invalid")
    for contact, problem in (("", "is required"), ("x" * 257, "at most 256")):
        with pytest.raises(aio.AioRpcError) as info:
            await erase(api, admin, workspace, contact)
        error = rich_error(info.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.violations[0][0] == "external_contact_id"
        assert problem in error.violations[0][1]
    missing = "zz" + uuid.uuid4().hex[:12]
    with pytest.raises(aio.AioRpcError) as info:
        await erase(api, api.platform_token, missing, "someone")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_turn_running_during_the_erasure_stores_nothing(
    sqlite_template: Path, tmp_path: Path
) -> None:
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await start_app(make_settings(tmp_path, url, offline_tokens_per_second=20.0))
    try:
        async with Api(app) as api:
            workspace, admin = await api.create_workspace("Erase mid-turn")
            contact = f"mid-{uuid.uuid4().hex}"
            mark = marker()
            chat = ChatStream(api, admin)
            await chat.start(parent=f"workspaces/{workspace}", external_contact_id=contact)
            await chat.say(f"Please tell me a long story about {mark}.")
            await chat.read_until("delta")  # the answer is streaming

            erased = await erase(api, admin, workspace, contact)

            assert erased.conversations_deleted == 1 and erased.streams_ended == 1
            await chat.failure(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
            await asyncio.wait_for(app.chat_hub.wait_closed(), 10)  # the turn's store ran
            dump = await table_dump(app.db, workspace)
            assert found_in(dump, mark) == [] and found_in(dump, contact) == []
            async with app.db.workspace(workspace) as session:
                types = (await session.execute(select(OutboxEventRow.type))).scalars().all()
            assert types == ["contact.erased"]  # the conversation's own events went too
    finally:
        await app.stop(grace=0)
