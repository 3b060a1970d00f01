"""Storage without gRPC: the tenancy guard, migrations, message sequence numbers and
cascading deletes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, delete, func, insert, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased

from fenlo_server.errors import NotFound
from fenlo_server.ids import new_id
from fenlo_server.storage import migrate
from fenlo_server.storage.db import Database, TenantSession, UnscopedQueryError
from fenlo_server.storage.models import (
    ApiKeyRow,
    Base,
    ConversationRow,
    MessageRow,
    WorkspaceRow,
    utcnow,
)
from fenlo_server.storage.repositories import (
    ApiKeyRepository,
    ConversationFilter,
    ConversationRepository,
    WorkspaceStore,
)
from tests.conftest import PG_ENV, _admin_execute

TABLES = set(Base.metadata.tables)  # every table the models define


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


@dataclass
class Tenant:
    workspace_id: str
    conversation_id: str
    message_ids: list[str]
    api_key_id: str
    request_id: str


async def make_tenant(db: Database, name: str) -> Tenant:
    async with db.unscoped("test: create workspace") as session:
        workspace = await WorkspaceStore(session).create(display_name=name, settings={}, quotas={})
    request_id = str(uuid.uuid4())
    async with db.workspace(workspace.id) as session:
        conversations = ConversationRepository(session)
        conversation = await conversations.create(
            channel="WEB",
            external_contact_id="contact",
            labels={"k": name},
            state="OPEN",
            request_id=request_id,
        )
        messages = [
            await conversations.append_message(
                conversation.id,
                role="USER",
                text=f"{name} asks",
                turn_id="t1",
                client_message_id="c1",
            ),
            await conversations.append_message(
                conversation.id, role="ASSISTANT", text=f"{name} answers", turn_id="t1"
            ),
        ]
        key = await ApiKeyRepository(session).create(
            display_name=name, roles=["service"], secret_hash=uuid.uuid4().hex, prefix="fk_x"
        )
    return Tenant(workspace.id, conversation.id, [m.id for m in messages], key.id, request_id)


@pytest.fixture
async def tenants(db: Database) -> tuple[Tenant, Tenant]:
    return await make_tenant(db, "A"), await make_tenant(db, "B")


async def rows_of(db: Database, model: Any, workspace_id: str) -> list[Any]:
    async with db.unscoped("test: inspect") as session:
        result = await session.execute(select(model).where(model.workspace_id == workspace_id))
        return list(result.scalars())


# The tenancy guard: repositories


async def test_repositories_cannot_reach_another_workspace(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    async with db.workspace(a.workspace_id) as session:
        conversations = ConversationRepository(session)
        assert (await conversations.get(a.conversation_id)) is not None  # not vacuous
        assert await conversations.get(b.conversation_id) is None
        assert await conversations.find_by_request_id(b.request_id) is None
        listed = await conversations.list_page(
            filters=ConversationFilter(), limit=100, before_id=None
        )
        assert [c.id for c in listed] == [a.conversation_id]
        assert await conversations.list_messages(b.conversation_id, limit=10, after_seq=0) == []
        assert len(await conversations.list_messages(a.conversation_id, limit=10, after_seq=0)) == 2
        assert await conversations.turn_messages(b.conversation_id, "t1") == []
        assert await conversations.find_user_message(b.conversation_id, "c1") is None
        assert await conversations.delete(b.conversation_id) is False

        keys = ApiKeyRepository(session)
        assert await keys.get(b.api_key_id) is None
        assert await keys.delete(b.api_key_id) is None
        assert [k.id for k in await keys.list_page(limit=10, before_id=None)] == [a.api_key_id]
        await keys.touch(b.api_key_id, utcnow())

        store = WorkspaceStore(session)
        assert (await store.get(a.workspace_id)) is not None
        with pytest.raises(RuntimeError):
            await store.get(b.workspace_id)
        with pytest.raises(RuntimeError):
            await store.delete(b.workspace_id)
        assert [w.id for w in await store.list_page(limit=10, before_id=None)] == [a.workspace_id]

    # Appending to B's conversation from A's session finds no conversation to update.
    with pytest.raises(NotFound):
        async with db.workspace(a.workspace_id) as session:
            await ConversationRepository(session).append_message(
                b.conversation_id, role="USER", text="intruder"
            )

    assert len(await rows_of(db, ConversationRow, b.workspace_id)) == 1
    assert len(await rows_of(db, MessageRow, b.workspace_id)) == 2
    [b_conv] = await rows_of(db, ConversationRow, b.workspace_id)
    assert (b_conv.message_count, b_conv.last_seq) == (2, 2)
    [b_key] = await rows_of(db, ApiKeyRow, b.workspace_id)
    assert b_key.last_use_time is None
    async with db.unscoped("test") as session:
        assert await session.get(WorkspaceRow, b.workspace_id) is not None


# The tenancy guard: ORM statements


async def test_orm_select_is_scoped(db: Database, tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    async with db.workspace(a.workspace_id) as session:
        assert set((await session.execute(select(MessageRow.id))).scalars()) == set(a.message_ids)
        assert {m.workspace_id for m in (await session.execute(select(MessageRow))).scalars()} == {
            a.workspace_id
        }
        assert (
            await session.execute(select(func.count()).select_from(MessageRow))
        ).scalar_one() == 2
        assert (
            await session.execute(
                select(MessageRow).where(MessageRow.workspace_id == b.workspace_id)
            )
        ).first() is None
        assert await session.get(ConversationRow, b.conversation_id) is None
        assert await session.get(MessageRow, b.message_ids[0]) is None
        assert await session.get(ApiKeyRow, b.api_key_id) is None

        joined = await session.execute(
            select(ConversationRow.id, MessageRow.id).join(
                MessageRow, MessageRow.conversation_id == ConversationRow.id
            )
        )
        assert {row[1] for row in joined} == set(a.message_ids)
        # A join that would pair A's conversation with B's messages finds nothing of B.
        cross = await session.execute(
            select(MessageRow.id).join(
                ConversationRow, ConversationRow.workspace_id != MessageRow.workspace_id
            )
        )
        assert cross.first() is None

        alias = aliased(MessageRow)
        assert set((await session.execute(select(alias.id))).scalars()) == set(a.message_ids)

        # Subqueries on tenant tables are scoped too.
        owners = await session.execute(
            select(WorkspaceRow.id).where(WorkspaceRow.id.in_(select(ConversationRow.workspace_id)))
        )
        assert set(owners.scalars()) == {a.workspace_id}


async def test_orm_update_and_delete_are_scoped(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    async with db.workspace(a.workspace_id) as session:
        result = await session.execute(update(MessageRow).values(text="rewritten"))
        assert result.rowcount == 2
        result = await session.execute(
            update(ConversationRow)
            .where(ConversationRow.id == b.conversation_id)
            .values(state="CLOSED")
        )
        assert result.rowcount == 0
        result = await session.execute(
            delete(MessageRow).where(MessageRow.conversation_id == b.conversation_id)
        )
        assert result.rowcount == 0
        result = await session.execute(delete(ApiKeyRow))
        assert result.rowcount == 1
        result = await session.execute(
            delete(ConversationRow).where(ConversationRow.id == b.conversation_id)
        )
        assert result.rowcount == 0

    assert {m.text for m in await rows_of(db, MessageRow, a.workspace_id)} == {"rewritten"}
    assert {m.text for m in await rows_of(db, MessageRow, b.workspace_id)} == {
        "B asks",
        "B answers",
    }
    assert [c.state for c in await rows_of(db, ConversationRow, b.workspace_id)] == ["OPEN"]
    assert await rows_of(db, ApiKeyRow, a.workspace_id) == []
    assert len(await rows_of(db, ApiKeyRow, b.workspace_id)) == 1

    # Deleting everything from A's session deletes only A's rows.
    async with db.workspace(a.workspace_id) as session:
        await session.execute(delete(MessageRow))
        await session.execute(delete(ConversationRow))
    assert await rows_of(db, ConversationRow, a.workspace_id) == []
    assert len(await rows_of(db, MessageRow, b.workspace_id)) == 2
    assert len(await rows_of(db, ConversationRow, b.workspace_id)) == 1


def _values(workspace_id: str, conversation_id: str, seq: int) -> dict[str, Any]:
    return {
        "id": new_id(),
        "workspace_id": workspace_id,
        "conversation_id": conversation_id,
        "seq": seq,
        "role": "USER",
        "text": "planted",
        "turn_id": "",
        "client_message_id": "",
        "interrupted": False,
        "citations": [],
        "analysis": {},
        "author": "",
        "create_time": utcnow(),
    }


def _message(workspace_id: str, conversation_id: str, seq: int) -> MessageRow:
    return MessageRow(**_values(workspace_id, conversation_id, seq))


async def test_writing_a_row_of_another_workspace_is_refused(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    # A new row that names another workspace.
    with pytest.raises(UnscopedQueryError):
        async with db.workspace(a.workspace_id) as session:
            session.add(_message(b.workspace_id, b.conversation_id, 99))
            await session.flush()
    # Moving one of the workspace's own rows to another workspace.
    with pytest.raises(UnscopedQueryError):
        async with db.workspace(a.workspace_id) as session:
            row = await session.get(ConversationRow, a.conversation_id)
            assert row is not None
            row.workspace_id = b.workspace_id
            await session.flush()
    # Merging a row of another workspace (its lookup is scoped, so it is added as new).
    with pytest.raises(UnscopedQueryError):
        async with db.workspace(a.workspace_id) as session:
            await session.merge(_message(b.workspace_id, b.conversation_id, 98))
            await session.flush()
    # ORM INSERT and UPDATE statements that write another workspace's id.
    with pytest.raises(UnscopedQueryError):
        async with db.workspace(a.workspace_id) as session:
            await session.execute(
                insert(MessageRow).values(**_values(b.workspace_id, b.conversation_id, 97))
            )
    with pytest.raises(UnscopedQueryError):
        async with db.workspace(a.workspace_id) as session:
            await session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == a.conversation_id)
                .values(workspace_id=b.workspace_id)
            )
    # ORM bulk INSERT with a list of parameter sets, and INSERT ... FROM SELECT.
    with pytest.raises(UnscopedQueryError):
        async with db.workspace(a.workspace_id) as session:
            await session.execute(
                insert(MessageRow),
                [
                    _values(a.workspace_id, a.conversation_id, 96),
                    _values(b.workspace_id, b.conversation_id, 95),
                ],
            )
    with pytest.raises(UnscopedQueryError):
        async with db.workspace(a.workspace_id) as session:
            await session.execute(
                insert(ApiKeyRow).from_select(
                    ["id", "workspace_id", "display_name", "roles", "secret_hash", "prefix"],
                    select(
                        ApiKeyRow.id + "x",
                        ApiKeyRow.workspace_id,
                        ApiKeyRow.display_name,
                        ApiKeyRow.roles,
                        ApiKeyRow.secret_hash + "x",
                        ApiKeyRow.prefix,
                    ),
                )
            )
    # Nothing was written, and the workspace's own writes still work.
    assert {m.text for m in await rows_of(db, MessageRow, b.workspace_id)} == {
        "B asks",
        "B answers",
    }
    assert len(await rows_of(db, ConversationRow, a.workspace_id)) == 1
    async with db.workspace(a.workspace_id) as session:
        session.add(_message(a.workspace_id, a.conversation_id, 50))
        await session.execute(
            insert(MessageRow).values(**_values(a.workspace_id, a.conversation_id, 51))
        )
        await session.execute(
            insert(MessageRow),
            [_values(a.workspace_id, a.conversation_id, seq) for seq in (52, 53)],
        )
        await session.execute(
            update(ConversationRow)
            .where(ConversationRow.id == a.conversation_id)
            .values(workspace_id=a.workspace_id, state="HANDED_OFF")
        )
    assert len(await rows_of(db, MessageRow, a.workspace_id)) == 6
    assert [c.state for c in await rows_of(db, ConversationRow, a.workspace_id)] == ["HANDED_OFF"]


async def test_core_statements_on_tenant_tables_are_refused_in_a_workspace_session(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    """with_loader_criteria scopes ORM entities only, so Core statements must not run."""
    a, _ = tenants
    messages = MessageRow.__table__
    for statement in (
        select(messages.c.text),
        update(messages).values(text="rewritten"),
        delete(messages),
        insert(messages).values(**_values(a.workspace_id, a.conversation_id, 60)),
    ):
        with pytest.raises(UnscopedQueryError):
            async with db.workspace(a.workspace_id) as session:
                await session.execute(statement)
    # Core statements on the workspaces table are no tenant's business.
    async with db.workspace(a.workspace_id) as session:
        workspaces = WorkspaceRow.__table__
        assert (await session.execute(select(func.count()).select_from(workspaces))).scalar()
    assert {m.text for m in await rows_of(db, MessageRow, a.workspace_id)} == {
        "A asks",
        "A answers",
    }


async def test_a_session_without_workspace_or_reason_refuses_tenant_tables(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    a, _ = tenants
    bare = async_sessionmaker(db.engine, sync_session_class=TenantSession)
    statements: list[Any] = [
        select(MessageRow),
        select(ConversationRow.id),
        select(func.count()).select_from(ApiKeyRow),
        select(MessageRow.__table__.c.text),
        select(WorkspaceRow.id).where(WorkspaceRow.id.in_(select(ConversationRow.workspace_id))),
        update(MessageRow.__table__).values(text="x"),
        update(ConversationRow).values(state="CLOSED"),
        delete(MessageRow),
        insert(ApiKeyRow).values(
            id=new_id(),
            workspace_id=a.workspace_id,
            display_name="",
            roles=[],
            secret_hash=uuid.uuid4().hex,
            prefix="fk_",
            create_time=utcnow(),
        ),
    ]
    for statement in statements:
        with pytest.raises(UnscopedQueryError):
            async with bare() as session, session.begin():
                await session.execute(statement)
    with pytest.raises(UnscopedQueryError):
        async with bare() as session, session.begin():
            await session.get(ConversationRow, a.conversation_id)
    with pytest.raises(UnscopedQueryError):
        async with bare() as session, session.begin():
            session.add(_message(a.workspace_id, a.conversation_id, 77))
            await session.flush()
    with pytest.raises(RuntimeError):
        async with bare() as session:
            ConversationRepository(session)
    with pytest.raises(RuntimeError):
        async with bare() as session:
            WorkspaceStore(session)

    # The workspaces table is not a tenant table; and nothing above was written.
    async with bare() as session:
        assert await session.get(WorkspaceRow, a.workspace_id) is not None
    assert len(await rows_of(db, MessageRow, a.workspace_id)) == 2
    assert [c.state for c in await rows_of(db, ConversationRow, a.workspace_id)] == ["OPEN"]
    assert len(await rows_of(db, ApiKeyRow, a.workspace_id)) == 1


async def test_unscoped_session_with_a_reason_sees_every_workspace(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    async with db.unscoped("test: operator report") as session:
        ids = set(
            (
                await session.execute(
                    select(MessageRow.workspace_id).where(
                        MessageRow.workspace_id.in_([a.workspace_id, b.workspace_id])
                    )
                )
            ).scalars()
        )
    assert ids == {a.workspace_id, b.workspace_id}


# Sequence numbers and cascades


async def test_concurrent_appends_get_unique_consecutive_seqs(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    a, _ = tenants

    async def append(i: int) -> int:
        async with db.workspace(a.workspace_id) as session:
            row = await ConversationRepository(session).append_message(
                a.conversation_id, role="USER", text=f"m{i}"
            )
            return row.seq

    count = 20
    seqs = await asyncio.gather(*(append(i) for i in range(count)))
    assert sorted(seqs) == list(range(3, 3 + count))
    stored = await rows_of(db, MessageRow, a.workspace_id)
    assert sorted(m.seq for m in stored) == list(range(1, 3 + count))
    [conversation] = await rows_of(db, ConversationRow, a.workspace_id)
    assert conversation.message_count == conversation.last_seq == 2 + count
    async with db.workspace(a.workspace_id) as session:
        listed = await ConversationRepository(session).list_messages(
            a.conversation_id, limit=100, after_seq=0
        )
    assert [m.seq for m in listed] == list(range(1, 3 + count))


async def test_deleting_a_workspace_cascades(db: Database, tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    async with db.workspace(a.workspace_id) as session:
        assert await WorkspaceStore(session).delete(a.workspace_id) is True
    for model in (ApiKeyRow, ConversationRow, MessageRow):
        assert await rows_of(db, model, a.workspace_id) == [], model
        assert len(await rows_of(db, model, b.workspace_id)) >= 1, model
    async with db.unscoped("test") as session:
        assert await session.get(WorkspaceRow, a.workspace_id) is None
        assert await WorkspaceStore(session).delete(a.workspace_id) is False


async def test_deleting_a_conversation_row_cascades_to_its_messages(
    db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    async with db.workspace(a.workspace_id) as session:
        await session.execute(
            delete(ConversationRow).where(ConversationRow.id == a.conversation_id)
        )
    assert await rows_of(db, MessageRow, a.workspace_id) == []
    assert len(await rows_of(db, MessageRow, b.workspace_id)) == 2


# Migrations


def _schema(connection: Connection) -> tuple[set[str], str | None, list[Any]]:
    tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
    revision = MigrationContext.configure(connection).get_current_revision()
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return tables, revision, compare_metadata(context, Base.metadata)


async def _schema_of(db: Database) -> tuple[set[str], str | None, list[Any]]:
    async with db.engine.connect() as connection:
        return await connection.run_sync(_schema)


async def _up_down_up(url: str) -> None:
    head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
    db = Database(url)
    try:
        assert await migrate.pending(db)
        await migrate.upgrade(db)
        tables, revision, diff = await _schema_of(db)
        assert (tables, revision, diff) == (TABLES, head, [])
        assert not await migrate.pending(db)

        # Data survives nothing, but the schema must come back exactly.
        async with db.unscoped("test") as session:
            await WorkspaceStore(session).create(display_name="x", settings={}, quotas={})

        await migrate.downgrade(db, "base")
        tables, revision, _ = await _schema_of(db)
        assert (tables, revision) == (set(), None)
        assert await migrate.pending(db)

        await migrate.upgrade(db)
        tables, revision, diff = await _schema_of(db)
        assert (tables, revision, diff) == (TABLES, head, [])
        async with db.unscoped("test") as session:
            assert await WorkspaceStore(session).list_page(limit=10, before_id=None) == []
    finally:
        await db.dispose()


async def test_migrations_up_down_up_on_sqlite(tmp_path: Path) -> None:
    await _up_down_up(f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}")


async def test_migrations_up_down_up_on_postgresql() -> None:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"migrations on PostgreSQL need {PG_ENV}")
    name = f"fenlo_migrate_{uuid.uuid4().hex[:12]}"
    await _admin_execute(base, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        await _up_down_up(url)
    finally:
        await _admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_models_match_the_migrated_schema(db: Database) -> None:
    tables, _, diff = await _schema_of(db)
    assert tables >= TABLES
    assert diff == []
