"""Faults under load (issue 10): Redis stopped and restarted under running chats,
the server process killed mid-turn and restarted on its data, SIGTERM draining
open streams, PostgreSQL restarted under running chats.

Each scenario counts what the clients were told (turns acknowledged with
``turn_started``, turns completed) against what is stored afterwards (messages,
message counts) and what is delivered (StreamEvents from seq 0: each event id
once, per-workspace seqs gap-free), and writes it all into the ledger.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from sqlalchemy import func, select

from fenlo.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from fenlo_server.storage.models import OutboxEventRow
from tests.conftest import _sqlite_url, make_settings, start_app
from tests.helpers import Api, bearer
from tests.integration.test_shutdown import FENLO, ServeProcess
from tests.redis_helpers import eventually, private_redis, redis_health, replicas
from tests.reliability.ledger import Ledger

pytestmark = pytest.mark.reliability

SERVING = health_pb2.HealthCheckResponse.SERVING
READ_TIMEOUT = 20.0


# ---------------------------------------------------------------- a chat client that keeps count


@dataclass
class ChatClient:
    """One Chat stream doing turns, and what the server told it about each."""

    channel: aio.Channel
    token: str
    workspace: str
    label: str
    conversation: str = ""
    call: Any = None
    acknowledged: dict[str, str] = field(default_factory=dict)  # client id -> user message
    completed: dict[str, chat_pb2.TurnCompleted] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_codes: list[int] = field(default_factory=list)
    attempted: int = 0
    drained: bool = False
    counter: itertools.count[int] = field(default_factory=itertools.count)

    async def open(self, **start: Any) -> None:
        stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.call = stub.Chat(metadata=bearer(self.token), timeout=300)
        if not start:
            start = {"parent": f"workspaces/{self.workspace}"}
        await self.call.write(chat_pb2.ChatRequest(start=chat_pb2.StartChat(**start)))
        first = await self.read()
        assert first.WhichOneof("kind") == "session_started", first
        self.conversation = first.session_started.conversation.name

    async def read(self) -> chat_pb2.ChatResponse:
        response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert response is not aio.EOF, "the chat stream ended"
        assert isinstance(response, chat_pb2.ChatResponse)
        return response

    def next_id(self) -> str:
        return f"{self.label}-{next(self.counter)}"

    async def say(self, client_id: str, text: str = "") -> None:
        self.attempted += 1
        message = chat_pb2.UserMessage(
            text=text or f"Hello, this is message {client_id}. What can you tell me?",
            client_message_id=client_id,
        )
        await self.call.write(chat_pb2.ChatRequest(user_message=message))

    async def finish_turn(
        self, client_id: str, *, on_started: Callable[[], None] | None = None
    ) -> chat_pb2.TurnCompleted | None:
        """Read to the end of ``client_id``'s turn; None if it ended with an error."""
        while True:
            response = await self.read()
            kind = response.WhichOneof("kind")
            if kind == "draining":
                self.drained = True
            elif kind == "turn_started":
                assert response.turn_started.client_message_id == client_id, response
                self.acknowledged[client_id] = response.turn_started.user_message
                if on_started is not None:
                    on_started()
            elif kind == "turn_completed":
                self.completed[client_id] = response.turn_completed
                return response.turn_completed
            elif kind == "error":
                self.errors.append(f"{client_id}: {response.error.status.message}")
                self.error_codes.append(response.error.status.code)
                return None

    async def turn(self, client_id: str | None = None) -> chat_pb2.TurnCompleted | None:
        client_id = client_id or self.next_id()
        await self.say(client_id)
        return await self.finish_turn(client_id)

    async def loop(self, stop: asyncio.Event) -> None:
        """Turns one after the other until ``stop`` is set."""
        while not stop.is_set():
            await self.turn()

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()


# ---------------------------------------------------------------- checks


async def list_messages(
    channel: aio.Channel, token: str, conversation: str
) -> list[conversation_pb2.Message]:
    stub = conversation_pb2_grpc.ConversationServiceStub(channel)
    messages: list[conversation_pb2.Message] = []
    page_token = ""
    while True:
        page = await stub.ListMessages(
            conversation_pb2.ListMessagesRequest(
                parent=conversation, page_size=1000, page_token=page_token
            ),
            metadata=bearer(token),
            timeout=10,
        )
        messages.extend(page.messages)
        page_token = page.next_page_token
        if not page_token:
            return messages


async def check_conversation(
    ledger: Ledger, channel: aio.Channel, token: str, client: ChatClient
) -> int:
    """Stored messages against what ``client`` saw; returns the problems found."""
    messages = await list_messages(channel, token, client.conversation)
    conversation = await conversation_pb2_grpc.ConversationServiceStub(channel).GetConversation(
        conversation_pb2.GetConversationRequest(name=client.conversation),
        metadata=bearer(token),
        timeout=10,
    )
    users = collections.Counter(
        m.client_message_id for m in messages if m.role == conversation_pb2.MESSAGE_ROLE_USER
    )
    answers = collections.Counter(
        m.turn_id for m in messages if m.role == conversation_pb2.MESSAGE_ROLE_ASSISTANT
    )
    names = {m.name for m in messages}
    lost = [cid for cid in client.acknowledged if users[cid] == 0]
    lost += [
        cid
        for cid, done in client.completed.items()
        if done.assistant_message and done.assistant_message not in names
    ]
    duplicated = [cid for cid, n in users.items() if n > 1]
    duplicated += [turn for turn, n in answers.items() if n > 1]
    ledger.checked(rows=len(messages))
    ledger.found(
        lost=len(lost),
        duplicated=len(duplicated),
        why=f"{client.label}: lost {lost[:5]}, stored twice {duplicated[:5]}",
    )
    miscount = conversation.message_count != len(messages)
    ledger.found(
        lost=int(miscount),
        why=f"{client.label}: message_count {conversation.message_count} "
        f"but {len(messages)} messages",
    )
    return len(lost) + len(duplicated) + int(miscount)


async def read_events(
    channel: aio.Channel, token: str, workspace: str, *, count: int, call: Any = None
) -> list[event_pb2.Event]:
    """``count`` events of a StreamEvents call (a new one from seq 0 unless given)."""
    if call is None:
        call = stream_events(channel, token, workspace)
    events: list[event_pb2.Event] = []
    try:
        async with asyncio.timeout(60):
            while len(events) < count:
                event = await call.read()
                assert event is not aio.EOF, f"the event stream ended after {len(events)}"
                events.append(event)
        # Anything more that arrives at once is a duplicate or an unexpected event.
        with contextlib.suppress(TimeoutError):
            while True:
                event = await asyncio.wait_for(call.read(), 1.0)
                if event is aio.EOF:
                    break
                events.append(event)
    finally:
        call.cancel()
    return events


def stream_events(channel: aio.Channel, token: str, workspace: str) -> Any:
    return event_pb2_grpc.EventServiceStub(channel).StreamEvents(
        event_pb2.StreamEventsRequest(parent=f"workspaces/{workspace}", start_after_seq=0),
        metadata=bearer(token),
        timeout=300,
    )


def check_events(
    ledger: Ledger, events: list[event_pb2.Event], expected: int, what: str
) -> collections.Counter[tuple[str, str]]:
    """Each id once, seqs 1..expected; returns (type, message or turn) counts."""
    ids = collections.Counter(e.name for e in events)
    twice = sum(n - 1 for n in ids.values() if n > 1)
    seqs = sorted({e.seq for e in events})
    missing = sorted(set(range(1, expected + 1)) - set(seqs))
    ledger.checked(events=len(events))
    ledger.found(
        duplicated=twice,
        lost=len(missing),
        why=f"{what}: {twice} event deliveries twice, seqs missing {missing[:10]}",
    )
    assert twice == 0, f"{what}: events delivered twice"
    assert not missing, f"{what}: seqs missing {missing[:10]}"
    assert seqs == list(range(1, expected + 1)), f"{what}: seqs {seqs[:5]}..{seqs[-5:]}"
    keys: collections.Counter[tuple[str, str]] = collections.Counter()
    for event in {e.name: e for e in events}.values():
        payload = dict(event.payload)
        keys[(event.type, str(payload.get("message") or payload.get("turn") or ""))] += 1
    return keys


def check_turn_events(
    ledger: Ledger, keys: collections.Counter[tuple[str, str]], clients: Sequence[ChatClient]
) -> int:
    """Per completed (not replayed) turn: one turn.completed, one message.created for
    its user message and one for its answer."""
    problems: list[str] = []
    for client in clients:
        for cid, done in client.completed.items():
            if done.replayed:
                continue
            wanted = [("turn.completed", done.turn_id), ("message.created", done.user_message)]
            if done.assistant_message:
                wanted.append(("message.created", done.assistant_message))
            problems += [f"{cid} {k[0]}×{keys[k]}" for k in wanted if keys[k] != 1]
    ledger.found(lost=len(problems), why=f"turn events not exactly once: {problems[:5]}")
    return len(problems)


# ---------------------------------------------------------------- 1. Redis restarted under load


@pytest.fixture
def shared_database(sqlite_template: Path, tmp_path: Path) -> str:
    postgres = os.environ.get("FENLO_TEST_DATABASE_URL")
    if postgres:
        pytest.skip("runs on one SQLite file shared by both servers")
    return _sqlite_url(sqlite_template, tmp_path / "db")


async def wait_turns(clients: Sequence[ChatClient], more: int, within: float, what: str) -> None:
    """Until every client has completed ``more`` further turns (bounded)."""
    targets = [len(c.completed) + more for c in clients]

    async def done() -> bool:
        return all(len(c.completed) >= t for c, t in zip(clients, targets, strict=True))

    await eventually(done, within=within, what=what, every=0.1)


async def outbox_count(api: Api, workspace: str) -> int:
    async with api.app.db.workspace(workspace) as session:
        count = await session.execute(select(func.count()).select_from(OutboxEventRow))
        return int(count.scalar_one())


async def stop_chat_loops(
    stop: asyncio.Event, loops: list[asyncio.Task[None]], clients: list[Any]
) -> None:
    """End the clients' chat loops (whatever is left of them) and hang up."""
    stop.set()
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    for client in clients:
        client.cancel()


async def test_redis_restarted_under_a_chat_load(
    tmp_path: Path, shared_database: str, ledger: Ledger
) -> None:
    async with (
        private_redis(tmp_path / "redis") as redis,
        replicas(
            tmp_path,
            shared_database,
            redis.url,
            redis_retry_seconds=1.0,
            offline_tokens_per_second=200.0,
        ) as (one, two),
    ):
        workspace, admin = await one.create_workspace("Redis under load")
        service = one.token(workspace, "service")
        live = stream_events(two.channel, service, workspace)  # open through the whole fault
        clients = [
            ChatClient(api.channel, admin, workspace, f"r{i}")
            for i, api in enumerate((one, two, one, two))
        ]
        for client in clients:
            await client.open()
        stop = asyncio.Event()
        loops = [asyncio.create_task(c.loop(stop)) for c in clients]
        try:
            await wait_turns(clients, 2, 60, "turns before the fault")
            await redis.kill()
            ledger.fault("redis stop")
            await wait_turns(clients, 3, 90, "turns while Redis is down")
            await redis.start()
            ledger.fault("redis restart")
            await eventually(
                lambda: _all_redis_serving((one, two)), within=20, what="redis SERVING again"
            )
            await wait_turns(clients, 3, 90, "turns after Redis came back")
            stop.set()
            async with asyncio.timeout(60):
                await asyncio.gather(*loops)
        finally:
            await stop_chat_loops(stop, loops, clients)

        attempted = sum(c.attempted for c in clients)
        succeeded = sum(len(c.completed) for c in clients)
        ledger.turns(attempted, succeeded)
        errors = [e for c in clients for e in c.errors]
        ledger.found(lost=len(errors), why=f"turns failed during the Redis fault: {errors[:3]}")
        assert not errors, errors
        assert succeeded == attempted

        problems = 0
        for client in clients:
            problems += await check_conversation(ledger, one.channel, admin, client)
        expected = await outbox_count(one, workspace)
        live_events = await read_events(two.channel, service, workspace, count=expected, call=live)
        keys = check_events(ledger, live_events, expected, "live reader through the fault")
        replayed = await read_events(one.channel, service, workspace, count=expected)
        check_events(ledger, replayed, expected, "reader from seq 0 afterwards")
        problems += check_turn_events(ledger, keys, clients)
        assert problems == 0


async def _all_redis_serving(apis: tuple[Api, Api]) -> bool:
    return all([await redis_health(api) == SERVING for api in apis])


# ---------------------------------------------------------------- 2. SIGKILL mid-turn


@contextlib.asynccontextmanager
async def serve_process(
    tmp_path: Path, *, grace: float = 5.0, tokens_per_second: float = 10.0
) -> AsyncIterator[ServeProcess]:
    """``fenlo serve`` with a data dir, a fixed port and JWT secret (tokens survive a
    restart) and a slow offline provider (a turn stays in flight); killed at the end."""
    serve = ServeProcess(tmp_path, grace)
    serve.env["FENLO_OFFLINE_TOKENS_PER_SECOND"] = str(tokens_per_second)
    serve.env["FENLO_LOG_FORMAT"] = "text"
    try:
        await serve.start(within=60)
        yield serve
    finally:
        await serve.kill()


async def create_workspace(serve: ServeProcess, channel: aio.Channel) -> str:
    created = await workspace_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
        workspace_pb2.CreateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(display_name="Faults")
        ),
        metadata=bearer(serve.token(None, "platform_admin")),
        timeout=10,
    )
    return str(created.name.split("/")[1])


async def in_flight(client: ChatClient, client_id: str) -> None:
    """Send ``client_id`` and read until its turn is acknowledged and answering."""
    await client.say(client_id)
    started = False
    while True:
        response = await client.read()
        kind = response.WhichOneof("kind")
        if kind == "turn_started":
            client.acknowledged[client_id] = response.turn_started.user_message
            started = True
        elif kind == "delta" and started:
            return
        assert kind not in ("turn_completed", "error"), f"the turn ended too soon: {response}"


async def events_until_quiet(channel: aio.Channel, token: str, workspace: str) -> list[Any]:
    """Every event StreamEvents from seq 0 sends until it is quiet for 2 s (bounded)."""
    call = stream_events(channel, token, workspace)
    events: list[event_pb2.Event] = []
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    event = await asyncio.wait_for(call.read(), 2.0)
                except TimeoutError:
                    return events
                assert event is not aio.EOF, "the event stream ended"
                events.append(event)
    finally:
        call.cancel()


async def drain_reader(call: Any, into: list[event_pb2.Event]) -> None:
    """Collect a live StreamEvents call's events until it breaks."""
    with contextlib.suppress(aio.AioRpcError):
        while (event := await call.read()) is not aio.EOF:
            into.append(event)


async def check_restarted(
    ledger: Ledger,
    channel: aio.Channel,
    admin: str,
    workspace: str,
    clients: list[ChatClient],
    *,
    before: list[event_pb2.Event],
) -> int:
    """After a restart: conversations consistent, every event seen before still
    delivered, each id once, seqs gap-free; the turn events of completed turns."""
    problems = 0
    for client in clients:
        problems += await check_conversation(ledger, channel, admin, client)
    events = await events_until_quiet(channel, admin, workspace)
    keys = check_events(ledger, events, max(e.seq for e in events), "from seq 0 after restart")
    names = {e.name for e in events}
    missing = [e.name for e in before if e.name not in names]
    ledger.checked(events=len(before))
    ledger.found(lost=len(missing), why=f"events delivered before the restart gone: {missing[:3]}")
    problems += len(missing) + check_turn_events(ledger, keys, clients)
    return problems


async def test_sigkill_mid_turn_and_restart_on_the_same_data(
    tmp_path: Path, ledger: Ledger
) -> None:
    async with serve_process(tmp_path) as serve:
        assert serve.process is not None
        channel = aio.insecure_channel(f"127.0.0.1:{serve.port}")
        try:
            workspace = await create_workspace(serve, channel)
            admin = serve.token(workspace, "admin")
            live = stream_events(channel, admin, workspace)
            seen: list[event_pb2.Event] = []
            reading = asyncio.create_task(drain_reader(live, seen))
            clients = [ChatClient(channel, admin, workspace, f"k{i}") for i in range(3)]
            for client in clients:
                await client.open()
            async with asyncio.timeout(60):
                for done in await asyncio.gather(*(c.turn() for c in clients)):
                    assert done is not None
            interrupted = {c.label: c.next_id() for c in clients}
            async with asyncio.timeout(30):
                await asyncio.gather(*(in_flight(c, interrupted[c.label]) for c in clients))
            serve.process.send_signal(signal.SIGKILL)
            ledger.fault("server SIGKILL mid-turn")
            assert await serve.exit_code(10) == -signal.SIGKILL
            for client in clients:
                with pytest.raises(aio.AioRpcError):
                    await client.finish_turn(interrupted[client.label])
            async with asyncio.timeout(10):
                await reading
        finally:
            await channel.close()

        await serve.start(within=60)
        ledger.fault("server restart")
        channel = aio.insecure_channel(f"127.0.0.1:{serve.port}")
        try:
            for client in clients:
                client.channel = channel
            problems = await check_restarted(
                ledger, channel, admin, workspace, clients, before=seen
            )

            # The interrupted message again, with the same id: replayed or run once.
            retried = collections.Counter[str]()
            for client in clients:
                await client.open(conversation=client.conversation)
                done = await client.turn(interrupted[client.label])
                assert done is not None, client.errors
                answered = "with an answer" if done.assistant_message else "without an answer"
                retried[f"{'replayed' if done.replayed else 'run'} {answered}"] += 1
                assert await client.turn() is not None, client.errors  # and a new turn
                client.cancel()
            problems += await check_restarted(
                ledger, channel, admin, workspace, clients, before=seen
            )
            ledger.turns(sum(c.attempted for c in clients), sum(len(c.completed) for c in clients))
            ledger.note(f"SIGKILL: interrupted messages retried: {dict(retried)}")
            # A stored message has its event, even when its turn was killed (both are
            # written in the acknowledging commit).
            orphans = await orphaned_user_messages(channel, admin, workspace, clients)
            ledger.found(
                lost=len(orphans),
                why=f"SIGKILL: {len(orphans)} acknowledged user message(s) of killed turns "
                "stored without a message.created event",
            )
            assert problems == 0
            assert not orphans
        finally:
            for client in clients:
                client.cancel()
            await channel.close()


async def orphaned_user_messages(
    channel: aio.Channel, token: str, workspace: str, clients: list[ChatClient]
) -> list[str]:
    """Stored user messages that no message.created event names."""
    events = await events_until_quiet(channel, token, workspace)
    created = {dict(e.payload).get("message") for e in events if e.type == "message.created"}
    stored = [
        m.name
        for c in clients
        for m in await list_messages(channel, token, c.conversation)
        if m.role == conversation_pb2.MESSAGE_ROLE_USER
    ]
    return [name for name in stored if name not in created]


# ---------------------------------------------------------------- 3. SIGTERM drains


async def test_sigterm_drains_running_turns_and_loses_nothing(
    tmp_path: Path, ledger: Ledger
) -> None:
    grace = 30.0
    async with serve_process(tmp_path, grace=grace) as serve:
        assert serve.process is not None
        channel = aio.insecure_channel(f"127.0.0.1:{serve.port}")
        try:
            workspace = await create_workspace(serve, channel)
            admin = serve.token(workspace, "admin")
            seen: list[event_pb2.Event] = []
            reading = asyncio.create_task(
                drain_reader(stream_events(channel, admin, workspace), seen)
            )
            clients = [ChatClient(channel, admin, workspace, f"t{i}") for i in range(3)]
            for client in clients:
                await client.open()
            async with asyncio.timeout(60):
                for done in await asyncio.gather(*(c.turn() for c in clients)):
                    assert done is not None
            running = {c.label: c.next_id() for c in clients}
            async with asyncio.timeout(30):
                await asyncio.gather(*(in_flight(c, running[c.label]) for c in clients))
            serve.process.send_signal(signal.SIGTERM)
            ledger.fault("server SIGTERM mid-turn")
            # The running turns finish (or are stored interrupted) and the streams
            # are told to drain; then the clients end their streams.
            async with asyncio.timeout(grace + 10):
                finished = await asyncio.gather(*(c.finish_turn(running[c.label]) for c in clients))
            for client, done in zip(clients, finished, strict=True):
                assert done is not None, client.errors
                if not client.drained:
                    assert (await client.read()).WhichOneof("kind") == "draining"
                    client.drained = True
                await client.call.done_writing()
                assert await asyncio.wait_for(client.call.read(), 10) is aio.EOF
            interrupted = sum(d is not None and d.interrupted for d in finished)
            code = await serve.exit_code(grace + 10)
            assert code == 0, serve.stderr.read_text()[-3000:]
            async with asyncio.timeout(10):
                await reading
        finally:
            await channel.close()
        ledger.turns(sum(c.attempted for c in clients), sum(len(c.completed) for c in clients))
        ledger.note(f"SIGTERM: {len(finished)} running turns finished, {interrupted} interrupted")

        await serve.start(within=60)
        ledger.fault("server restart")
        channel = aio.insecure_channel(f"127.0.0.1:{serve.port}")
        try:
            for client in clients:
                client.channel = channel
            problems = await check_restarted(
                ledger, channel, admin, workspace, clients, before=seen
            )
            orphans = await orphaned_user_messages(channel, admin, workspace, clients)
            ledger.found(lost=len(orphans), why=f"SIGTERM: user messages without event {orphans}")
            assert problems == 0 and not orphans
        finally:
            await channel.close()


# ---------------------------------------------------------------- 4. PostgreSQL restarted


def pg_version() -> str:
    """The local cluster's version (its directory under /etc/postgresql), or ""."""
    clusters = Path("/etc/postgresql")
    return sorted(p.name for p in clusters.iterdir())[-1] if clusters.is_dir() else ""


async def run(*command: str, within: float = 60, env: dict[str, str] | None = None) -> int:
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await asyncio.wait_for(process.wait(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def postgres_ready() -> bool:
    return await run("pg_isready", "-h", "127.0.0.1", "-p", "5432", "-t", "2", within=10) == 0


async def restart_postgres() -> None:
    await run("pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", "restart")


async def ensure_postgres() -> None:
    """PostgreSQL running again (started if the restart left it down), bounded."""
    if not await postgres_ready():
        await run("pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", "start")
    await eventually(postgres_ready, within=60, what="PostgreSQL ready", every=0.5)


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new database, migrated with ``fenlo migrate``; dropped at the end."""
    if not shutil.which("createdb") or not pg_version():
        pytest.skip("needs a local PostgreSQL cluster")
    if not await postgres_ready():
        pytest.skip("PostgreSQL is not running")
    name = f"fenlo_faults_{uuid.uuid4().hex[:10]}"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    assert await run("createdb", "-h", "127.0.0.1", "-U", "postgres", name) == 0
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
        env["FENLO_DATABASE_URL"] = url
        assert await run(str(FENLO), "migrate", env=env, within=120) == 0
        yield url
    finally:
        await ensure_postgres()
        await run(
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


async def resilient_loop(client: ChatClient, stop: asyncio.Event, rpc_errors: list[str]) -> None:
    """Turns until ``stop``; a broken stream is recorded and opened again (paced)."""
    while not stop.is_set():
        try:
            if client.call is None or client.call.done():
                await client.open(conversation=client.conversation)
            if await client.turn() is None:
                await asyncio.sleep(0.1)  # a failed turn: retry paced, as a client would
        except aio.AioRpcError as error:
            rpc_errors.append(f"{error.code().name}: {error.details()}")
            client.call = None
            await asyncio.sleep(0.2)


async def test_postgres_restarted_under_a_chat_load(tmp_path: Path, ledger: Ledger) -> None:
    async with fresh_postgres_database() as url:
        app = await start_app(make_settings(tmp_path, url, offline_tokens_per_second=100.0))
        api = Api(app)
        clients: list[ChatClient] = []
        loops: list[asyncio.Task[None]] = []
        stop = asyncio.Event()
        rpc_errors: list[str] = []
        try:
            workspace, admin = await api.create_workspace("PostgreSQL under load")
            clients = [ChatClient(api.channel, admin, workspace, f"p{i}") for i in range(3)]
            for client in clients:
                await client.open()
            loops = [asyncio.create_task(resilient_loop(c, stop, rpc_errors)) for c in clients]
            await wait_turns(clients, 2, 60, "turns before the restart")
            try:
                await restart_postgres()
                ledger.fault("postgresql restart")
            finally:
                await ensure_postgres()
            # The server recovers by itself: every stream completes turns again.
            await wait_turns(clients, 3, 90, "turns after PostgreSQL came back")
            stop.set()
            async with asyncio.timeout(60):
                await asyncio.gather(*loops)
        finally:
            await stop_chat_loops(stop, loops, clients)
            try:
                if clients:
                    await check_after_postgres(ledger, api, clients, rpc_errors)
            finally:
                await api.channel.close()
                await app.stop(grace=0)


async def check_after_postgres(
    ledger: Ledger, api: Api, clients: list[ChatClient], rpc_errors: list[str]
) -> None:
    attempted = sum(c.attempted for c in clients)
    ledger.turns(attempted, sum(len(c.completed) for c in clients))
    codes = collections.Counter(c for client in clients for c in client.error_codes)
    unclear = {code: n for code, n in codes.items() if code != grpc.StatusCode.UNAVAILABLE.value[0]}
    unclear_rpc = [e for e in rpc_errors if not e.startswith("UNAVAILABLE")]
    ledger.note(
        f"PostgreSQL restart: {sum(codes.values())} turn errors (codes {dict(codes)}), "
        f"{len(rpc_errors)} streams broken"
    )
    if unclear or unclear_rpc:
        ledger.note(f"PostgreSQL restart: failures not UNAVAILABLE: {unclear} {unclear_rpc[:3]}")
    workspace, admin = clients[0].workspace, clients[0].token
    problems = 0
    for client in clients:
        problems += await check_conversation(ledger, api.channel, admin, client)
    expected = await outbox_count(api, workspace)
    events = await read_events(api.channel, admin, workspace, count=expected)
    keys = check_events(ledger, events, expected, "from seq 0 after the PostgreSQL restart")
    problems += check_turn_events(ledger, keys, clients)
    assert not unclear and not unclear_rpc, (unclear, unclear_rpc, clients[0].errors[:3])
    assert problems == 0
