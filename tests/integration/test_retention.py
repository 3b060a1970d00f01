"""Retention: what is older than a workspace's retention_days goes, in bounded
batches; recent data, workspaces that keep everything (0) and other workspaces
stay. It runs on the server's timer, as the ARQ cron job and from the CLI."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from fenlo.v1 import conversation_pb2 as C
from fenlo.v1 import workspace_pb2 as W
from fenlo_server.jobs.arq_worker import RETENTION, retention, retention_schedule, worker_settings
from fenlo_server.jobs.retention import RetentionLimits, prune_workspace, run_retention
from fenlo_server.storage.db import Database
from fenlo_server.storage.models import LeadRow, MessageRow, OutboxEventRow, utcnow
from tests.conftest import _sqlite_url, make_settings, start_app
from tests.helpers import Api
from tests.integration.test_cli import cli_env, run
from tests.lifecycle_helpers import backdate_conversation, chat_turns, found_in, table_dump


def marker() -> str:
    return "rt" + uuid.uuid4().hex[:12]


def days(n: int) -> W.WorkspaceSettings:
    return W.WorkspaceSettings(retention_days=n)


def cid(conversation: C.Conversation) -> str:
    return conversation.name.split("/")[-1]


async def message_texts(api: Api, token: str, conversation: C.Conversation) -> list[str]:
    listed = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=conversation.name), metadata=api.md(token)
    )
    return [m.text for m in listed.messages]


async def test_retention_removes_only_what_is_older_than_the_workspace_keeps(api: Api) -> None:
    db = api.app.db
    ws, admin = await api.create_workspace("Retention", settings=days(30))
    forever, forever_admin = await api.create_workspace("Forever", settings=days(0))
    other, other_admin = await api.create_workspace("Other", settings=days(30))
    old_mark, half_mark, new_mark, forever_mark, other_mark = (marker() for _ in range(5))
    long_ago = utcnow() - timedelta(days=40)

    old = await chat_turns(
        api, admin, ws, "c-old", [f"I want to buy, email {old_mark}@example.com"]
    )
    await backdate_conversation(db, ws, cid(old), long_ago)
    # A conversation whose first turn is old and whose second is recent.
    half = await chat_turns(api, admin, ws, "c-half", [f"first {half_mark}", "second, recent"])
    async with db.workspace(ws) as session:
        first_turn = (
            await session.execute(
                select(MessageRow.id)
                .where(MessageRow.conversation_id == cid(half))
                .order_by(MessageRow.seq)
                .limit(2)
            )
        ).scalars()
        await session.execute(
            update(MessageRow)
            .where(MessageRow.id.in_(list(first_turn)))
            .values(create_time=long_ago)
        )
    new = await chat_turns(api, admin, ws, "c-new", [f"fresh {new_mark}"])
    kept_forever = await chat_turns(api, forever_admin, forever, "c-f", [f"keep {forever_mark}"])
    await backdate_conversation(db, forever, cid(kept_forever), utcnow() - timedelta(days=4000))
    other_old = await chat_turns(api, other_admin, other, "c-o", [f"other {other_mark}"])
    await backdate_conversation(db, other, cid(other_old), long_ago)
    other_before = await table_dump(db, other)
    forever_before = await table_dump(db, forever)
    assert found_in(await table_dump(db, ws), old_mark)

    results = await run_retention(db, workspace_id=ws)

    pruned = results[ws]
    assert (pruned.messages, pruned.conversations, pruned.leads) == (4, 1, 1)
    assert pruned.events >= 3 and pruned.done
    after = await table_dump(db, ws)
    assert found_in(after, old_mark) == [] and found_in(after, cid(old)) == []
    assert found_in(after, half_mark) == []
    remaining = await message_texts(api, admin, half)
    assert len(remaining) == 2 and remaining[0] == "second, recent"
    got = await api.conversations.GetConversation(
        C.GetConversationRequest(name=half.name), metadata=api.md(admin)
    )
    assert got.message_count == 2  # the count follows the deletion
    assert new_mark in (await message_texts(api, admin, new))[0]
    # Only the one workspace was asked for.
    assert await table_dump(db, other) == other_before

    # A run over every workspace: the other one loses its old data; 0 keeps forever.
    results = await run_retention(db)
    assert ws in results and other in results and forever not in results
    assert results[ws].messages == 0
    assert found_in(await table_dump(db, other), other_mark) == []
    assert await table_dump(db, forever) == forever_before


async def test_retention_works_in_bounded_batches(sqlite_api: Api) -> None:
    api = sqlite_api
    db = api.app.db
    ws, admin = await api.create_workspace("Batches", settings=days(1))
    conversations = [await chat_turns(api, admin, ws, f"c{i}", ["hello there"]) for i in range(3)]
    for conversation in conversations:
        await backdate_conversation(db, ws, cid(conversation), utcnow() - timedelta(days=2))
    limits = RetentionLimits(batch_size=2, max_batches=1)

    first = await prune_workspace(db, ws, 1, limits=limits)
    assert first.messages == 2 and not first.done  # 6 messages, 2 per run
    passes = 1
    while not (await prune_workspace(db, ws, 1, limits=limits)).done:
        passes += 1
        assert passes < 20
    async with db.workspace(ws) as session:
        left = (await session.execute(select(func.count()).select_from(MessageRow))).scalar()
        leads = (await session.execute(select(func.count()).select_from(LeadRow))).scalar()
        events = (await session.execute(select(func.count()).select_from(OutboxEventRow))).scalar()
    assert (left, leads, events) == (0, 0, 0)
    listed = await api.conversations.ListConversations(
        C.ListConversationsRequest(parent=f"workspaces/{ws}"), metadata=api.md(admin)
    )
    assert list(listed.conversations) == []


async def test_the_server_runs_retention_on_its_timer(
    sqlite_template: Path, tmp_path: Path
) -> None:
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await start_app(make_settings(tmp_path, url, retention_interval_seconds=0.2))
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Timer", settings=days(7))
            mark = marker()
            old = await chat_turns(api, admin, ws, "c", [f"timer {mark}"])
            await backdate_conversation(app.db, ws, cid(old), utcnow() - timedelta(days=8))
            deadline = time.monotonic() + 15
            # The run counts itself once it has been through every workspace, a moment
            # after this one's rows are gone.
            while found_in(await table_dump(app.db, ws), mark) or app.retention.runs < 1:
                assert time.monotonic() < deadline, "the timer did not remove the old messages"
                await asyncio.sleep(0.1)
    finally:
        await app.stop(grace=0)


def test_the_arq_worker_schedules_retention() -> None:
    settings = make_settings(Path("/tmp"), "sqlite+aiosqlite://", redis_url="redis://127.0.0.1:1")
    names = [job.name for job in worker_settings(settings)["cron_jobs"]]
    assert RETENTION in names
    assert retention_schedule(3600) == {"hour": set(range(24)), "minute": 0, "second": 0}
    assert retention_schedule(900) == {"minute": {0, 15, 30, 45}, "second": 0}
    assert retention_schedule(0) is None
    off = make_settings(
        Path("/tmp"), "sqlite+aiosqlite://", redis_url="redis://1", retention_interval_seconds=0
    )
    assert RETENTION not in [job.name for job in worker_settings(off)["cron_jobs"]]


async def test_the_arq_retention_task_prunes(sqlite_api: Api) -> None:
    api = sqlite_api
    ws, admin = await api.create_workspace("Arq retention", settings=days(3))
    old = await chat_turns(api, admin, ws, "c", ["an old question"])
    await backdate_conversation(api.app.db, ws, cid(old), utcnow() - timedelta(days=4))
    ctx = {"db": api.app.db, "retention_limits": RetentionLimits()}
    assert await retention(ctx) >= 2
    assert found_in(await table_dump(api.app.db, ws), cid(old)) == []


async def test_fenlo_retention_run_from_the_command_line(
    sqlite_template: Path, tmp_path: Path
) -> None:
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await start_app(make_settings(tmp_path, url))
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("CLI retention", settings=days(5))
            old = await chat_turns(api, admin, ws, "c", ["old words"])
            await backdate_conversation(app.db, ws, cid(old), utcnow() - timedelta(days=6))
    finally:
        await app.stop(grace=0)
    env = cli_env(tmp_path / "data", FENLO_DATABASE_URL=url)
    result = await run(env, tmp_path, "retention", "run", "--workspace", ws)
    assert result.code == 0, result.stderr
    line = json.loads(result.last_line)
    assert line["workspace"] == f"workspaces/{ws}"
    assert (line["messages"], line["conversations"], line["more"]) == (2, 1, False)
    db = Database(url)
    try:
        assert found_in(await table_dump(db, ws), cid(old)) == []
    finally:
        await db.dispose()
    missing = await run(env, tmp_path, "retention", "run", "--workspace", "nope")
    assert "does not exist" in missing.one_line_error()


async def _deliveries(db: Database, ws: str, spec: list[tuple[str, int]]) -> list[str]:
    """Webhook deliveries in ``ws`` of (state, age in days); their ids. Each is of an
    event of its own in the outbox (a delivery is only made for a stored event)."""
    from fenlo_server.storage.models import OutboxEventRow, WebhookDeliveryRow
    from fenlo_server.storage.webhooks import WebhookRepository

    ids = []
    async with db.workspace(ws) as session:
        repo = WebhookRepository(session)
        hook = await repo.create(
            webhook_id=uuid.uuid4().hex,
            url="https://example.com/hook",
            event_types=[],
            description="",
            enabled=True,
            secret_ciphertext="x",
            request_id=None,
            request_hash=None,
        )
        for seq, (state, age) in enumerate(spec, start=10_000):
            event = OutboxEventRow(
                id=uuid.uuid4().hex, workspace_id=ws, seq=seq, type="t", published_time=utcnow()
            )
            session.add(event)
            [row] = await repo.add_pending(
                [hook.id], event_id=event.id, event_seq=seq, event_type="t", body="{}"
            )
            ids.append(row.id)
            await session.execute(
                update(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id == row.id)
                .values(state=state, create_time=utcnow() - timedelta(days=age))
            )
    return ids


async def _delivery_ids(db: Database, ws: str) -> set[str]:
    from fenlo_server.storage.models import WebhookDeliveryRow

    async with db.workspace(ws) as session:
        return set((await session.execute(select(WebhookDeliveryRow.id))).scalars())


async def test_retention_removes_old_webhook_deliveries(api: Api) -> None:
    db = api.app.db
    keeps, _ = await api.create_workspace("Keeps messages", settings=days(0))
    limited, _ = await api.create_workspace("Ten days", settings=days(10))
    spec = [("SUCCEEDED", 40), ("DEAD_LETTER", 40), ("PENDING", 40), ("SUCCEEDED", 12)]
    old_ok, old_dead, old_pending, recent_ok = await _deliveries(db, keeps, spec)
    limited_ids = await _deliveries(db, limited, spec)
    limits = RetentionLimits(delivery_days=30)

    results = await run_retention(db, limits=limits)

    # Every workspace: finished deliveries older than 30 days; a pending one waits.
    assert await _delivery_ids(db, keeps) == {old_pending, recent_ok}
    assert results[keeps].deliveries == 2
    # A workspace keeping 10 days loses all its deliveries older than that.
    assert await _delivery_ids(db, limited) == set()
    assert results[limited].deliveries == len(limited_ids)
    # 0 keeps them.
    assert keeps not in await run_retention(db, limits=RetentionLimits(delivery_days=0))
    assert await _delivery_ids(db, keeps) == {old_pending, recent_ok}
    assert old_ok and old_dead
