"""Helpers for the data-lifecycle tests: real chat turns, and a scan of every table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from fenlo.v1 import conversation_pb2
from fenlo_server.storage.db import Database
from fenlo_server.storage.models import (
    Base,
    ConversationRow,
    MessageRow,
    OutboxEventRow,
)
from tests.chat_helpers import ChatStream
from tests.helpers import Api


async def chat_turns(
    api: Api, token: str, workspace_id: str, contact: str, texts: list[str]
) -> conversation_pb2.Conversation:
    """A new conversation of ``contact`` with one real turn per text; the stream ends."""
    chat = ChatStream(api, token)
    session = await chat.start(parent=f"workspaces/{workspace_id}", external_contact_id=contact)
    for text in texts:
        await chat.say(text)
        await chat.turn()
    await chat.call.done_writing()
    await chat.rest()
    return session.conversation


async def table_dump(db: Database, workspace_id: str) -> dict[str, list[str]]:
    """Every row of the workspace in every table of the schema, as text: rows whose
    ``workspace_id`` is the workspace, its own row in ``workspaces``, and every row
    of any table without a workspace column. Left out: an outbox row's
    ``published_time``, the relay's own bookkeeping, which it sets in the background
    (a moment after the commit) and which is no data of the workspace."""
    dump: dict[str, list[str]] = {}
    async with db.unscoped("the test scans every table") as session:
        for table in Base.metadata.sorted_tables:
            columns = [
                c
                for c in table.c
                if not (table.name == "outbox_events" and c.name == "published_time")
            ]
            query = select(*columns)
            if "workspace_id" in table.c:
                query = query.where(table.c.workspace_id == workspace_id)
            elif table.name == "workspaces":
                query = query.where(table.c.id == workspace_id)
            rows = (await session.execute(query)).all()
            dump[table.name] = [repr(tuple(row)) for row in rows]
    return dump


def found_in(dump: dict[str, list[str]], needle: str) -> list[str]:
    """The tables whose rows contain ``needle``."""
    return sorted(name for name, rows in dump.items() if any(needle in row for row in rows))


async def backdate_conversation(
    db: Database, workspace_id: str, conversation_id: str, when: datetime
) -> None:
    """Make a conversation, its messages and its events look created at ``when``."""
    async with db.workspace(workspace_id) as session:
        await session.execute(
            update(MessageRow)
            .where(MessageRow.conversation_id == conversation_id)
            .values(create_time=when)
        )
        await session.execute(
            update(ConversationRow)
            .where(ConversationRow.id == conversation_id)
            .values(create_time=when, update_time=when, last_message_time=when)
        )
        events = (await session.execute(select(OutboxEventRow))).scalars().all()
        for event in events:
            if f"/conversations/{conversation_id}" in str(event.payload):
                event.create_time = when
