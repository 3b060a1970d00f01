"""Events end to end: the outbox relay, Redis Streams between replicas,
EventService.StreamEvents, and agent messages into Chat streams on other replicas.

Real servers on port 0, real channels, the real PostgreSQL (``database_url``) and
Redis: the shared one with a unique key prefix per test, or a private
redis-server that a test kills and starts again empty.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio
from sqlalchemy import func, select, update

from fenlo.v1 import conversation_pb2 as C
from fenlo.v1 import event_pb2, event_pb2_grpc
from fenlo.v1 import knowledge_pb2 as K
from fenlo_server import metrics
from fenlo_server.app import FenloApp
from fenlo_server.events.bus import PublishedEvent
from fenlo_server.storage.models import OutboxEventRow
from tests.chat_helpers import ChatStream
from tests.conftest import make_settings, start_app
from tests.helpers import Api, rich_error
from tests.integration.test_knowledge import kb, upload, wait_done

READ_TIMEOUT = 15.0
REDIS_SERVER = shutil.which("redis-server")


# ---------------------------------------------------------------- helpers


class EventReader:
    """One StreamEvents call."""

    def __init__(
        self,
        api: Api,
        token: str,
        workspace_id: str,
        *,
        types: tuple[str, ...] = (),
        start_after_seq: int = 0,
    ) -> None:
        self.call: Any = event_pb2_grpc.EventServiceStub(api.channel).StreamEvents(
            event_pb2.StreamEventsRequest(
                parent=f"workspaces/{workspace_id}",
                types=list(types),
                start_after_seq=start_after_seq,
            ),
            metadata=api.md(token),
            timeout=120,
        )

    async def next(self) -> event_pb2.Event:
        event = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert event is not aio.EOF, "the event stream ended"
        assert isinstance(event, event_pb2.Event)
        return event

    async def until(
        self, done: Callable[[event_pb2.Event], bool], limit: int = 500
    ) -> list[event_pb2.Event]:
        """Events up to and including the first one ``done`` accepts."""
        events: list[event_pb2.Event] = []
        for _ in range(limit):
            events.append(await self.next())
            if done(events[-1]):
                return events
        raise AssertionError(f"no matching event in {limit}: {[e.type for e in events]}")

    def close(self) -> None:
        self.call.cancel()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def outbox_rows(app: FenloApp, workspace_id: str) -> list[OutboxEventRow]:
    async with app.db.workspace(workspace_id) as session:
        return list(
            (await session.execute(select(OutboxEventRow).order_by(OutboxEventRow.seq))).scalars()
        )


async def unpublished(app: FenloApp, workspace_id: str) -> int:
    async with app.db.workspace(workspace_id) as session:
        return int(
            (
                await session.execute(
                    select(func.count())
                    .select_from(OutboxEventRow)
                    .where(OutboxEventRow.published_time.is_(None))
                )
            ).scalar_one()
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, database_url: str, count: int = 2, **overrides: Any
) -> AsyncIterator[list[tuple[FenloApp, Api]]]:
    """``count`` servers on one database (and one Redis, if given), sharing secrets."""
    shared = {"jwt_secret": "replicas-" + uuid.uuid4().hex, "page_token_secret": "p" * 32}
    shared.update(overrides)
    apps: list[FenloApp] = []
    apis: list[Api] = []
    try:
        for i in range(count):
            apps.append(
                await start_app(make_settings(tmp_path / f"replica{i}", database_url, **shared))
            )
            apis.append(Api(apps[-1]))
        yield list(zip(apps, apis, strict=True))
    finally:
        for api in apis:
            await api.channel.close()
        for app in apps:
            await app.stop(grace=0)


async def post(api: Api, token: str, conversation: str, text: str) -> C.Message:
    return await api.conversations.PostAgentMessage(
        C.PostAgentMessageRequest(parent=conversation, text=text), metadata=api.md(token)
    )


# ---------------------------------------------------------------- StreamEvents


async def test_the_stream_opens_before_any_event_and_misses_nothing_after(api: Api) -> None:
    """The response headers come at once (a client or a proxy sees the stream open
    while the workspace has no event yet), and an event committed after them arrives."""
    workspace, admin = await api.create_workspace("Headers first")
    reader = EventReader(api, api.token(workspace, "service"), workspace)
    await asyncio.wait_for(reader.call.initial_metadata(), READ_TIMEOUT)
    chat = ChatStream(api, admin)
    await chat.start(parent=f"workspaces/{workspace}")
    first = await reader.next()
    assert (first.seq, first.type) == (1, "conversation.started")
    reader.close()
    chat.call.cancel()


async def test_events_of_chat_turns_stream_filtered_and_resume_without_loss(api: Api) -> None:
    workspace, admin = await api.create_workspace("Events")
    service = api.token(workspace, "service")
    live = EventReader(api, service, workspace, types=("message.created", "turn.completed"))
    chat = ChatStream(api, admin)
    session = await chat.start(parent=f"workspaces/{workspace}")
    conversation = session.conversation.name
    await chat.say("Hello, when are you open?")
    await chat.turn()
    first = await live.until(lambda e: e.type == "turn.completed")
    assert {e.type for e in first} == {"message.created", "turn.completed"}
    created = [e for e in first if e.type == "message.created"]
    assert created[0].payload["role"] == "user"
    assert created[0].payload["message"].startswith(conversation + "/messages/")
    assert first[-1].payload["conversation"] == conversation
    assert first[-1].name.startswith(f"workspaces/{workspace}/events/")
    assert [e.seq for e in first] == sorted({e.seq for e in first})
    live.close()

    # Disconnected meanwhile: a second turn and an agent's message.
    await chat.say("Can I pay in cash?")
    await chat.turn()
    await post(api, admin, conversation, "Hi, Sam here.")

    # Resumed from the last seq seen: everything after it, each once, in order.
    resumed = EventReader(api, service, workspace, start_after_seq=first[-1].seq)
    rest = await resumed.until(lambda e: e.type == "conversation.state_changed")
    assert [e.seq for e in rest] == list(range(first[-1].seq + 1, first[-1].seq + 1 + len(rest)))
    assert [e.type for e in rest].count("turn.completed") == 1
    assert "agent_message.posted" in [e.type for e in rest]
    assert rest[-1].payload["state"] == "HANDED_OFF"

    # Live after the replay, with no gap or duplicate at the seam.
    await post(api, admin, conversation, "Still there?")
    more = [await resumed.next()]
    assert more[0].seq == rest[-1].seq + 1 and more[0].type == "agent_message.posted"
    resumed.close()

    # From the start: every stored event, seq 1..n, the conversation first.
    everything = EventReader(api, service, workspace)
    all_events = await everything.until(lambda e: e.seq == more[0].seq)
    assert [e.seq for e in all_events] == list(range(1, more[0].seq + 1))
    assert all_events[0].type == "conversation.started"
    assert all_events[0].payload["conversation"] == conversation
    everything.close()
    chat.call.cancel()


async def test_stream_events_validates_its_request(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, admin = await api.create_workspace("Validation")
    for request, field in (
        ({"types": ["message.created", "nonsense.type"]}, "types[1]"),
        ({"start_after_seq": -1}, "start_after_seq"),
    ):
        call = event_pb2_grpc.EventServiceStub(api.channel).StreamEvents(
            event_pb2.StreamEventsRequest(parent=f"workspaces/{workspace}", **request),
            metadata=api.md(admin),
        )
        with pytest.raises(aio.AioRpcError) as info:
            await call.read()
        error = rich_error(info.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v[0] for v in error.violations] == [field]


async def test_document_events(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, admin = await api.create_workspace("Documents")
    reader = EventReader(
        api, admin, workspace, types=("document.ready", "document.failed", "document.deleted")
    )
    created = await kb(api).ImportText(
        K.ImportTextRequest(parent=f"workspaces/{workspace}", text="We open at nine."),
        metadata=api.md(admin),
    )
    ready = await reader.next()
    assert (ready.type, ready.payload["document"]) == ("document.ready", created.name)
    assert ready.payload["chunk_count"] >= 1
    blank = await upload(api, workspace, admin, b"   \n\n\t \n", source_uri="blank.txt")
    await wait_done(api, admin, blank.name)
    failed = await reader.next()
    assert (failed.type, failed.payload["document"]) == ("document.failed", blank.name)
    assert failed.payload["reason"]
    await kb(api).DeleteDocument(K.DeleteDocumentRequest(name=created.name), metadata=api.md(admin))
    deleted = await reader.next()
    assert (deleted.type, deleted.payload["document"]) == ("document.deleted", created.name)
    assert [ready.seq, failed.seq, deleted.seq] == sorted({ready.seq, failed.seq, deleted.seq})
    reader.close()


async def test_a_slow_reader_catches_up_from_the_outbox(
    sqlite_template: Path, tmp_path: Path
) -> None:
    from tests.conftest import _sqlite_url

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    # A buffer of one live event: an agent's message commits two events at once,
    # so the second overflows it and the call must read from the outbox instead.
    async with replicas(tmp_path, url, count=1, events_stream_buffer=1) as [(_app, api)]:
        workspace, admin = await api.create_workspace("Slow")
        conversation = await api.create_conversation(workspace, admin)
        reader = EventReader(api, admin, workspace)
        before = metrics.EVENT_STREAM_CATCH_UPS.labels("overflow")._value.get()
        for i in range(5):
            await post(api, admin, conversation.name, f"Message {i}")
        events = await reader.until(lambda e: e.seq == 6)
        assert [e.seq for e in events] == list(range(1, 7))
        assert [e.type for e in events][:2] == [
            "agent_message.posted",
            "conversation.state_changed",
        ]
        assert metrics.EVENT_STREAM_CATCH_UPS.labels("overflow")._value.get() > before
        reader.close()


async def test_stream_events_ends_cleanly_on_drain(sqlite_app: FenloApp) -> None:
    async with Api(sqlite_app) as api:
        workspace, admin = await api.create_workspace("Drain")
        reader = EventReader(api, admin, workspace)

        async def opened() -> bool:
            return sqlite_app.event_streams.open == 1

        await eventually(opened, "the stream to open")
        stopping = sqlite_app.stop(grace=1.0)
        assert await asyncio.wait_for(reader.call.read(), READ_TIMEOUT) is aio.EOF
        assert await reader.call.code() == grpc.StatusCode.OK
        await stopping


# ---------------------------------------------------------------- replicas


def prefix() -> str:
    return f"fenlo-test-{uuid.uuid4().hex[:12]}"


async def consumed_all(app: FenloApp, client: aioredis.Redis, key: str) -> bool:
    newest = await client.xrevrange(key, count=1)
    return not newest or app.relay.consumed_id == newest[0][0].decode()


async def test_an_agent_message_on_one_replica_reaches_a_chat_stream_on_another_once(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    keys = prefix()
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        async with replicas(
            tmp_path, database_url, redis_url=redis_url, events_redis_prefix=keys
        ) as [(one, api1), (two, api2)]:
            workspace, admin = await api1.create_workspace("Replicas")
            chat = ChatStream(api2, admin)  # held on replica two
            session = await chat.start(parent=f"workspaces/{workspace}")
            conversation = session.conversation.name
            reader = EventReader(api2, admin, workspace, start_after_seq=1)

            posted = await post(api1, admin, conversation, "Hi, Ana from replica one.")
            pushed = await chat.read_until("agent_message")
            assert pushed.agent_message.message.name == posted.name
            assert pushed.agent_message.message.text == "Hi, Ana from replica one."
            streamed = await reader.until(lambda e: e.type == "conversation.state_changed")
            assert [e.type for e in streamed] == [
                "agent_message.posted",
                "conversation.state_changed",
            ]
            assert streamed[0].payload["message"] == posted.name

            # Everything published, and replica two has read the shared stream to its end
            # and polled the outbox again: no second copy reaches the Chat stream.
            async def drained() -> bool:
                return await unpublished(one, workspace) == 0

            await eventually(drained, "the outbox to drain")
            await eventually(
                lambda: consumed_all(two, client, f"{keys}:events"), "replica two to catch up"
            )
            await two.relay.drain()
            await chat.say("Thanks!")
            turn = await chat.turn()  # the first response is turn_started, not a copy
            assert "agent_message" not in [e.WhichOneof("kind") for e in turn.events]
            assert turn.text == ""  # handed off: the assistant stays silent
            reader.close()
            chat.call.cancel()

            # A stream held on the replica that posts gets it once too (on commit, and
            # the relay's second copy is dropped by the bus).
            local = ChatStream(api1, admin)
            session = await local.start(parent=f"workspaces/{workspace}")
            posted = await post(api1, admin, session.conversation.name, "Local hello.")
            pushed = await local.read_until("agent_message")
            assert pushed.agent_message.message.name == posted.name
            await eventually(drained, "the outbox to drain")
            await one.relay.drain()
            await local.say("Thanks!")
            turn = await local.turn()
            assert "agent_message" not in [e.WhichOneof("kind") for e in turn.events]
            local.call.cancel()
    finally:
        await delete_keys(client, keys)
        await client.aclose()


async def delete_keys(client: aioredis.Redis, keys: str) -> None:
    found = [key async for key in client.scan_iter(match=f"{keys}:*", count=500)]
    if found:
        await client.delete(*found)


async def test_a_restarted_relay_does_not_deliver_an_event_twice(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    keys = prefix()
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        async with replicas(
            tmp_path, database_url, redis_url=redis_url, events_redis_prefix=keys
        ) as [(one, api1), (two, _api2)]:
            seen: list[str] = []

            async def record(event: PublishedEvent) -> None:
                seen.append(event.id)

            two.bus.subscribe("test", record)
            workspace, admin = await api1.create_workspace("Dedup")
            conversation = await api1.create_conversation(workspace, admin)
            for text in ("One", "Two"):
                await post(api1, admin, conversation.name, text)
            ids = [row.id for row in await outbox_rows(one, workspace)]
            assert len(ids) == 3

            async def all_seen() -> bool:
                return set(ids) <= set(seen)

            await eventually(all_seen, "replica two to see every event")

            # Replica one's relay "crashed" after XADD but before it marked its rows:
            # they are unpublished again and the restarted relay sends them again.
            await one.relay.stop()
            async with one.db.workspace(workspace) as session:
                await session.execute(
                    update(OutboxEventRow)
                    .where(OutboxEventRow.id.in_(ids))
                    .values(published_time=None)
                )
            one.relay.start()
            one.relay.notify()

            async def sent_twice() -> bool:
                entries = await client.xrange(f"{keys}:events")
                sent = collections.Counter(fields[b"id"].decode() for _, fields in entries)
                return all(sent[i] >= 2 for i in ids) and await unpublished(one, workspace) == 0

            await eventually(sent_twice, "the events to be published again")
            await eventually(
                lambda: consumed_all(two, client, f"{keys}:events"), "replica two to catch up"
            )
            assert collections.Counter(seen) == collections.Counter(set(seen))  # each once
            assert set(ids) <= set(seen)
    finally:
        await delete_keys(client, keys)
        await client.aclose()


# ---------------------------------------------------------------- Redis lost


class RedisProcess:
    """A private redis-server (never the shared one): killed and started again empty."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        with (self.directory / "redis.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                REDIS_SERVER,
                *("--port", str(self.port), "--save", "", "--appendonly", "no"),
                *("--bind", "127.0.0.1", "--dir", str(self.directory)),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while True:
            assert self.process.returncode is None, (self.directory / "redis.log").read_text()
            probe = aioredis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
            try:
                if await probe.ping():
                    return
            except aioredis.RedisError:
                pass
            finally:
                await probe.aclose()
            assert time.monotonic() < deadline, "redis-server did not start"
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)
        self.process = None


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_lost_events_wait_in_the_outbox_and_streams_are_rebuilt(
    tmp_path: Path, database_url: str
) -> None:
    server = RedisProcess(free_port(), tmp_path)
    client = aioredis.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=1)
    try:
        await server.start()
        async with replicas(tmp_path, database_url, redis_url=server.url) as [
            (one, api1),
            (two, api2),
        ]:
            workspace, admin = await api1.create_workspace("Redis lost")
            stream_key = f"fenlo:ws:{workspace}:events"
            chat = ChatStream(api2, admin)
            session = await chat.start(parent=f"workspaces/{workspace}")
            conversation = session.conversation.name
            first = await post(api1, admin, conversation, "Before the outage.")
            assert (await chat.read_until("agent_message")).agent_message.message.name == first.name

            async def streamed_seqs() -> set[int]:
                entries = await client.xrange(stream_key)
                return {int(fields[b"seq"]) for _, fields in entries}

            async def all_streamed() -> bool:
                rows = await outbox_rows(one, workspace)
                published = await unpublished(one, workspace) == 0
                return published and await streamed_seqs() == {r.seq for r in rows}

            await eventually(all_streamed, "the events to reach the workspace stream")

            await server.kill()
            # Every call still works; replica two still gets the agent's message (from
            # the shared outbox); the events wait there for Redis.
            second = await post(api1, admin, conversation, "During the outage.")
            pushed = await chat.read_until("agent_message")
            assert pushed.agent_message.message.name == second.name
            await api1.conversations.UpdateConversation(
                C.UpdateConversationRequest(
                    conversation=C.Conversation(name=conversation, state=C.CONVERSATION_STATE_OPEN),
                    update_mask={"paths": ["state"]},
                ),
                metadata=api1.md(admin),
            )
            await chat.say("Are you open on Sunday?")
            turn = await chat.turn()
            assert turn.completed.turn_id
            assert await unpublished(one, workspace) > 0

            # Redis comes back empty: the backlog goes out, the stream is rebuilt.
            rebuilds = one.relay.rebuilds + two.relay.rebuilds
            await server.start()
            await eventually(all_streamed, "the workspace stream to be rebuilt")
            assert one.relay.rebuilds + two.relay.rebuilds == rebuilds + 1
            assert await client.exists("fenlo:events:epoch") == 1

            # And across replicas through Redis again.
            third = await post(api1, admin, conversation, "After the outage.")
            pushed = await chat.read_until("agent_message")
            assert pushed.agent_message.message.name == third.name
            chat.call.cancel()
    finally:
        await client.aclose()
        await server.kill()
