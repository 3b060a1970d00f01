"""Repositories. Each is built on a session and issues only ORM statements, so
the tenancy guard of ``db.py`` scopes every one of them to the session's
workspace. Nothing here knows about gRPC or protobuf.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server import names
from fenlo_server.errors import NotFound, Reason
from fenlo_server.ids import new_id
from fenlo_server.storage.db import UNSCOPED_KEY, WORKSPACE_KEY
from fenlo_server.storage.models import (
    ApiKeyRow,
    ConversationRow,
    MessageRow,
    WorkspaceRow,
    utcnow,
)


class DuplicateRequest(Exception):
    """A concurrent Create with the same request_id won the race."""


def conversation_gone(workspace_id: str, conversation_id: str) -> NotFound:
    """The error of a write to a conversation that was deleted or erased meanwhile."""
    name = names.conversation(workspace_id, conversation_id)
    return NotFound(
        Reason.ERROR_REASON_RESOURCE_NOT_FOUND,
        f"conversation {name} no longer exists (it was deleted or erased)",
        metadata={"resource": name},
    )


def workspace_of(session: AsyncSession) -> str:
    workspace = session.info.get(WORKSPACE_KEY)
    if not isinstance(workspace, str):
        raise RuntimeError("this repository needs a workspace session (Database.workspace)")
    return workspace


class WorkspaceStore:
    """The workspaces table. Scoped sessions may only read their own workspace."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._only = session.info.get(WORKSPACE_KEY)
        if self._only is None and not session.info.get(UNSCOPED_KEY):
            raise RuntimeError("WorkspaceStore needs a workspace or an unscoped session")

    def _check(self, workspace_id: str) -> None:
        if self._only is not None and workspace_id != self._only:
            raise RuntimeError("workspace session used for another workspace")

    async def create(
        self,
        *,
        display_name: str,
        settings: dict[str, Any],
        quotas: dict[str, Any],
        request_id: str | None = None,
        request_hash: str | None = None,
    ) -> WorkspaceRow:
        if self._only is not None:
            raise RuntimeError("workspaces are created in an unscoped session")
        now = utcnow()
        row = WorkspaceRow(
            id=new_id(),
            display_name=display_name,
            settings=settings,
            quotas=quotas,
            request_id=request_id,
            request_hash=request_hash,
            create_time=now,
            update_time=now,
        )
        self._session.add(row)
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise DuplicateRequest from exc
        return row

    async def get(self, workspace_id: str) -> WorkspaceRow | None:
        self._check(workspace_id)
        return await self._session.get(WorkspaceRow, workspace_id)

    async def find_by_request_id(self, request_id: str) -> WorkspaceRow | None:
        result = await self._session.execute(
            select(WorkspaceRow).where(WorkspaceRow.request_id == request_id)
        )
        return result.scalar_one_or_none()

    async def list_page(self, *, limit: int, before_id: str | None) -> list[WorkspaceRow]:
        query = select(WorkspaceRow).order_by(WorkspaceRow.id.desc()).limit(limit)
        if self._only is not None:
            query = query.where(WorkspaceRow.id == self._only)
        if before_id is not None:
            query = query.where(WorkspaceRow.id < before_id)
        return list((await self._session.execute(query)).scalars())

    async def save(self, row: WorkspaceRow) -> WorkspaceRow:
        self._check(row.id)
        row.update_time = utcnow()
        await self._session.flush()
        return row

    async def delete(self, workspace_id: str) -> bool:
        """Delete the workspace; the database cascades to every row of it."""
        self._check(workspace_id)
        result = await self._session.execute(
            delete(WorkspaceRow).where(WorkspaceRow.id == workspace_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class ApiKeyRepository:
    """One workspace's API keys."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.workspace_id = workspace_of(session)

    async def create(
        self, *, display_name: str, roles: list[str], secret_hash: str, prefix: str
    ) -> ApiKeyRow:
        row = ApiKeyRow(
            id=new_id(),
            workspace_id=self.workspace_id,
            display_name=display_name,
            roles=roles,
            secret_hash=secret_hash,
            prefix=prefix,
            create_time=utcnow(),
        )
        self._session.add(row)
        await self._session.flush()
        return row

    async def list_page(self, *, limit: int, before_id: str | None) -> list[ApiKeyRow]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(ApiKeyRow.id < before_id)
        return list((await self._session.execute(query)).scalars())

    async def get(self, key_id: str) -> ApiKeyRow | None:
        result = await self._session.execute(select(ApiKeyRow).where(ApiKeyRow.id == key_id))
        return result.scalar_one_or_none()

    async def delete(self, key_id: str) -> ApiKeyRow | None:
        row = await self.get(key_id)
        if row is not None:
            await self._session.delete(row)
            await self._session.flush()
        return row

    async def touch(self, key_id: str, when: datetime) -> None:
        await self._session.execute(
            update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_use_time=when)
        )


async def find_api_key_by_hash(session: AsyncSession, secret_hash: str) -> ApiKeyRow | None:
    """The one lookup that runs before the workspace is known (authentication)."""
    if not session.info.get(UNSCOPED_KEY):
        raise RuntimeError("the API-key lookup needs an unscoped session")
    result = await session.execute(select(ApiKeyRow).where(ApiKeyRow.secret_hash == secret_hash))
    return result.scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """Filters of ListConversations; None means any."""

    state: str | None = None
    channel: str | None = None
    external_contact_id: str | None = None
    create_time_start: datetime | None = None
    create_time_end: datetime | None = None


@functools.lru_cache(maxsize=32)
def _next_message_statement(extra: tuple[str, ...]) -> Any:
    """``UPDATE conversations`` taking the next message ``seq`` (and setting the
    ``extra`` columns), built once per column set: building it cost as much as
    running it."""
    columns = ConversationRow.__table__.c
    return (
        update(ConversationRow)
        .where(ConversationRow.id == bindparam("conversation_id"))
        .values(
            last_seq=ConversationRow.last_seq + 1,
            message_count=ConversationRow.message_count + 1,
            last_message_time=bindparam("now", type_=columns.last_message_time.type),
            update_time=bindparam("now", type_=columns.update_time.type),
            **{name: bindparam(name, type_=columns[name].type) for name in extra},
        )
        .returning(ConversationRow.last_seq)
        # No loaded object to bring up to date (this costs a third of the call).
        .execution_options(synchronize_session=False)
    )


class ConversationRepository:
    """One workspace's conversations and their messages."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.workspace_id = workspace_of(session)

    async def create(
        self,
        *,
        channel: str,
        external_contact_id: str,
        labels: dict[str, str],
        state: str,
        request_id: str | None = None,
        request_hash: str | None = None,
    ) -> ConversationRow:
        now = utcnow()
        row = ConversationRow(
            id=new_id(),
            workspace_id=self.workspace_id,
            channel=channel,
            external_contact_id=external_contact_id,
            labels=labels,
            state=state,
            analysis={},
            message_count=0,
            last_seq=0,
            request_id=request_id,
            request_hash=request_hash,
            create_time=now,
            update_time=now,
        )
        self._session.add(row)
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise DuplicateRequest from exc
        return row

    async def find_by_request_id(self, request_id: str) -> ConversationRow | None:
        result = await self._session.execute(
            select(ConversationRow).where(ConversationRow.request_id == request_id)
        )
        return result.scalar_one_or_none()

    async def get(self, conversation_id: str) -> ConversationRow | None:
        result = await self._session.execute(
            select(ConversationRow).where(ConversationRow.id == conversation_id)
        )
        return result.scalar_one_or_none()

    async def get_message(self, conversation_id: str, message_id: str) -> MessageRow | None:
        result = await self._session.execute(
            select(MessageRow).where(
                MessageRow.id == message_id, MessageRow.conversation_id == conversation_id
            )
        )
        return result.scalar_one_or_none()

    async def list_page(
        self, *, filters: ConversationFilter, limit: int, before_id: str | None
    ) -> list[ConversationRow]:
        query = select(ConversationRow).order_by(ConversationRow.id.desc()).limit(limit)
        if filters.state is not None:
            query = query.where(ConversationRow.state == filters.state)
        if filters.channel is not None:
            query = query.where(ConversationRow.channel == filters.channel)
        if filters.external_contact_id is not None:
            query = query.where(ConversationRow.external_contact_id == filters.external_contact_id)
        if filters.create_time_start is not None:
            query = query.where(ConversationRow.create_time >= filters.create_time_start)
        if filters.create_time_end is not None:
            query = query.where(ConversationRow.create_time < filters.create_time_end)
        if before_id is not None:
            query = query.where(ConversationRow.id < before_id)
        return list((await self._session.execute(query)).scalars())

    async def save(self, row: ConversationRow) -> ConversationRow:
        row.update_time = utcnow()
        await self._session.flush()
        return row

    async def delete(self, conversation_id: str) -> bool:
        await self._session.execute(
            delete(MessageRow).where(MessageRow.conversation_id == conversation_id)
        )
        result = await self._session.execute(
            delete(ConversationRow).where(ConversationRow.id == conversation_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def append_message(
        self,
        conversation_id: str,
        *,
        role: str,
        text: str,
        turn_id: str = "",
        client_message_id: str = "",
        interrupted: bool = False,
        author: str = "",
        citations: list[dict[str, Any]] | None = None,
        conversation_values: Mapping[str, Any] | None = None,
    ) -> MessageRow:
        """Store a message as the conversation's next one (its ``seq``);
        ``conversation_values`` are set on the conversation in the same statement."""
        now = utcnow()
        extra = dict(conversation_values or {})
        result = await self._session.execute(
            _next_message_statement(tuple(sorted(extra))),
            {"conversation_id": conversation_id, "now": now, **extra},
        )
        seq = result.scalar_one_or_none()
        if seq is None:
            raise conversation_gone(self.workspace_id, conversation_id)
        row = MessageRow(
            id=new_id(),
            workspace_id=self.workspace_id,
            conversation_id=conversation_id,
            seq=seq,
            role=role,
            text=text,
            turn_id=turn_id,
            client_message_id=client_message_id,
            interrupted=interrupted,
            citations=citations or [],
            analysis={},
            author=author,
            create_time=now,
        )
        self._session.add(row)
        await self._session.flush()
        return row

    async def list_messages(
        self, conversation_id: str, *, limit: int, after_seq: int
    ) -> list[MessageRow]:
        query = (
            select(MessageRow)
            .where(MessageRow.conversation_id == conversation_id, MessageRow.seq > after_seq)
            .order_by(MessageRow.seq)
            .limit(limit)
        )
        return list((await self._session.execute(query)).scalars())

    async def turn_messages(self, conversation_id: str, turn_id: str) -> list[MessageRow]:
        query = (
            select(MessageRow)
            .where(MessageRow.conversation_id == conversation_id, MessageRow.turn_id == turn_id)
            .order_by(MessageRow.seq)
        )
        return list((await self._session.execute(query)).scalars())

    async def client_message_ids(self, conversation_id: str) -> set[str]:
        """The client_message_ids of the conversation's stored user messages."""
        query = select(MessageRow.client_message_id).where(
            MessageRow.conversation_id == conversation_id,
            MessageRow.role == "USER",
            MessageRow.client_message_id != "",
        )
        return set((await self._session.execute(query)).scalars())

    async def find_user_message(
        self, conversation_id: str, client_message_id: str
    ) -> MessageRow | None:
        query = select(MessageRow).where(
            MessageRow.conversation_id == conversation_id,
            MessageRow.client_message_id == client_message_id,
            MessageRow.role == "USER",
        )
        return (await self._session.execute(query)).scalars().first()
