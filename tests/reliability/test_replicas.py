"""Three ``fenlo serve`` replicas behind nginx ``grpc_pass``, sharing PostgreSQL and
Redis (issue 10, "Load and several replicas"):

- quotas are exact across replicas: concurrent chat streams, requests per minute
  and turns per minute are counted once for the workspace, wherever the calls land;
- events fan out: a StreamEvents reader on each replica sees every event of turns
  run on all of them, each once, with gap-free seqs;
- the LLM circuit breaker is shared: the failures that open it are counted over
  all replicas, and once open no replica calls the failing provider;
- a replica killed under load costs only the turns in flight on it: streams on
  the other replicas see no error, and the clients of the killed one reconnect
  through nginx and retry their message with the same ``client_message_id``,
  which stores nothing twice;
- page tokens from one replica page on another.

Every call goes through nginx unless a scenario needs one replica in particular;
nginx tells each call which replica took it (``x-fenlo-upstream``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio
from sqlalchemy.engine import make_url

from fenlo.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from fenlo_server.bench.openai_server import LocalOpenAIServer
from tests.helpers import bearer
from tests.redis_helpers import eventually
from tests.reliability.ledger import Ledger
from tests.reliability.replicas import Cluster, cluster, status_code, upstream_of
from tests.reliability.test_faults import (
    ChatClient,
    check_conversation,
    check_events,
    check_turn_events,
    fresh_postgres_database,
    read_events,
    stop_chat_loops,
    stream_events,
    wait_turns,
)

pytestmark = pytest.mark.reliability

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


async def outbox_count(database_url: str, workspace: str) -> int:
    url = make_url(database_url)
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM outbox_events WHERE workspace_id = $1", workspace
        )
    finally:
        await connection.close()
    return int(count)


class ReplicaClient(ChatClient):
    """A ChatClient that knows which replica holds its stream."""

    replica: int = -1

    async def open_on(self, cluster: Cluster, **start: Any) -> None:
        await self.open(**start)
        self.replica = cluster.replica_of(upstream_of(await self.call.initial_metadata()))


# ---------------------------------------------------------------- quotas


async def open_stream(cluster: Cluster, token: str, workspace: str) -> tuple[Any, str, str]:
    """A Chat stream through nginx: (call, "started" or the failure's code, replica)."""
    call = chat_pb2_grpc.ChatServiceStub(cluster.channel).Chat(metadata=bearer(token), timeout=120)
    await call.write(
        chat_pb2.ChatRequest(start=chat_pb2.StartChat(parent=f"workspaces/{workspace}"))
    )
    try:
        first = await asyncio.wait_for(call.read(), 30)
        assert isinstance(first, chat_pb2.ChatResponse), first
        outcome = "started" if first.WhichOneof("kind") == "session_started" else str(first)
    except aio.AioRpcError as error:
        outcome = error.code().name
    metadata = await call.initial_metadata()
    upstream = upstream_of(metadata) or upstream_of(await call.trailing_metadata())
    return call, outcome, str(cluster.replica_of(upstream)) if upstream else "?"


async def test_quotas_are_exact_across_replicas(tmp_path: Path, ledger: Ledger) -> None:
    async with fresh_postgres_database() as url, cluster(tmp_path, url) as c:
        # Concurrent chat streams: 4 for the workspace, wherever they land.
        limit = 4
        workspace = await c.create_workspace("Streams quota", concurrent_chat_streams=limit)
        token = c.token(workspace, "admin")
        opened = await asyncio.gather(*(open_stream(c, token, workspace) for _ in range(12)))
        outcomes = collections.Counter(o for _, o, _ in opened)
        by_replica = collections.Counter(r for _, _, r in opened)
        assert outcomes == {"started": limit, EXHAUSTED.name: 12 - limit}, outcomes
        assert len(by_replica) == 3, by_replica  # nginx spread the opens over every replica
        live = [call for call, o, _ in opened if o == "started"]
        for call in live[:2]:  # two slots come free ...
            call.cancel()

        async def two_free() -> bool:
            probe = await asyncio.gather(*(open_stream(c, token, workspace) for _ in range(5)))
            started = [call for call, o, _ in probe if o == "started"]
            for call in (call for call, _, _ in probe):
                call.cancel()
            return len(started) == 2

        # ... and then exactly two of five new streams start (slots are freed when a
        # stream's end reaches its replica; bounded wait).
        await eventually(two_free, within=20, what="two slots free again", every=0.5)
        for call in live[2:]:
            call.cancel()
        for call, _, _ in opened:
            call.cancel()

        # Requests per minute: one token bucket for the workspace, 30 a minute.
        per_minute = 30
        workspace = await c.create_workspace("Requests quota", requests_per_minute=per_minute)
        token = c.token(workspace, "admin")
        stub = workspace_pb2_grpc.WorkspaceServiceStub(c.channel)
        request = workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace}")

        async def get() -> tuple[str, str]:
            call = stub.GetWorkspace(request, metadata=bearer(token), timeout=30)
            try:
                await call
                code = "OK"
            except aio.AioRpcError as error:
                code = error.code().name
            upstream = upstream_of(await call.initial_metadata()) or upstream_of(
                await call.trailing_metadata()
            )
            return code, upstream

        began = time.monotonic()
        results = await asyncio.gather(*(get() for _ in range(3 * per_minute)))
        elapsed = time.monotonic() - began
        codes = collections.Counter(code for code, _ in results)
        replicas = {c.replica_of(u) for _, u in results if u}
        refill = per_minute / 60 * elapsed  # what the bucket earned during the burst
        ledger.note(
            f"replicas: {3 * per_minute} requests in {elapsed:.2f} s over replicas "
            f"{sorted(replicas)} against {per_minute}/min: {dict(codes)}"
        )
        assert set(codes) <= {"OK", EXHAUSTED.name}, codes
        assert per_minute <= codes["OK"] <= per_minute + int(refill) + 1, (codes, elapsed)
        assert replicas == {0, 1, 2}, replicas

        # Turns per minute: 6, over streams on three replicas sending 4 turns each.
        per_minute = 6
        workspace = await c.create_workspace("Turns quota", turns_per_minute=per_minute)
        token = c.token(workspace, "admin")
        clients = [ReplicaClient(c.channel, token, workspace, f"t{i}") for i in range(3)]
        for client in clients:
            await client.open_on(c)
        began = time.monotonic()

        async def four_turns(client: ReplicaClient) -> None:
            for _ in range(4):
                await client.turn()

        await asyncio.gather(*(four_turns(client) for client in clients))
        elapsed = time.monotonic() - began
        for client in clients:
            client.cancel()
        completed = sum(len(client.completed) for client in clients)
        refused = [code for client in clients for code in client.error_codes]
        ledger.turns(12, completed)
        ledger.note(
            f"replicas: 12 turns in {elapsed:.2f} s on replicas "
            f"{sorted(cl.replica for cl in clients)} against {per_minute}/min: "
            f"{completed} completed, {len(refused)} refused"
        )
        assert set(refused) <= {EXHAUSTED.value[0]}, refused
        assert per_minute <= completed <= per_minute + int(per_minute / 60 * elapsed) + 1
        assert completed + len(refused) == 12


# ---------------------------------------------------------------- events and page tokens


async def test_events_fan_out_to_every_replica(tmp_path: Path, ledger: Ledger) -> None:
    async with fresh_postgres_database() as url, cluster(tmp_path, url) as c:
        workspace = await c.create_workspace("Fan-out")
        admin, service = c.token(workspace, "admin"), c.token(workspace, "service")
        readers: dict[int, Any] = {}
        for _ in range(12):  # round robin: three calls reach three replicas (bounded)
            call = stream_events(c.channel, service, workspace)
            replica = c.replica_of(upstream_of(await call.initial_metadata()))
            if replica in readers:
                call.cancel()
            else:
                readers[replica] = call
            if len(readers) == 3:
                break
        assert sorted(readers) == [0, 1, 2], sorted(readers)

        clients = [ReplicaClient(c.channel, admin, workspace, f"e{i}") for i in range(9)]
        for client in clients:
            await client.open_on(c)
        assert {client.replica for client in clients} == {0, 1, 2}

        async def three_turns(client: ReplicaClient) -> None:
            for _ in range(3):
                assert await client.turn() is not None, client.errors

        await asyncio.gather(*(three_turns(client) for client in clients))
        for client in clients:
            client.cancel()
        ledger.turns(27, sum(len(client.completed) for client in clients))

        expected = await outbox_count(url, workspace)
        assert expected >= 27 * 3  # a turn.completed and two message.created a turn
        problems = 0
        for replica, call in sorted(readers.items()):
            events = await read_events(c.channel, service, workspace, count=expected, call=call)
            keys = check_events(ledger, events, expected, f"live reader on replica {replica}")
            problems += check_turn_events(ledger, keys, clients)
        for client in clients:
            problems += await check_conversation(ledger, c.channel, admin, client)
        assert problems == 0

        # A page token handed out by one replica pages on the others.
        conversations = conversation_pb2_grpc.ConversationServiceStub(c.channel)
        seen: list[str] = []
        page_token = ""
        for _ in range(20):
            page = await conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(
                    parent=f"workspaces/{workspace}", page_size=2, page_token=page_token
                ),
                metadata=bearer(admin),
                timeout=10,
            )
            seen += [conversation.name for conversation in page.conversations]
            page_token = page.next_page_token
            if not page_token:
                break
        assert sorted(seen) == sorted(client.conversation for client in clients)


# ---------------------------------------------------------------- the shared breaker


async def test_the_breaker_is_shared_by_the_replicas(tmp_path: Path, ledger: Ledger) -> None:
    minimum = 4
    provider = LocalOpenAIServer(chunks=5, mode="http_500")
    await provider.start()
    env = {
        "FENLO_LLM_ORDER": "openai",
        "FENLO_LLM_OFFLINE_FALLBACK": "true",
        "FENLO_OPENAI_API_KEY": "sk-replicas",
        "FENLO_OPENAI_BASE_URL": f"http://127.0.0.1:{provider.port}/v1",
        "FENLO_BREAKER_MINIMUM_CALLS": str(minimum),
        "FENLO_BREAKER_FAILURE_RATE": "0.5",
        "FENLO_BREAKER_WINDOW_SECONDS": "300",
        "FENLO_BREAKER_COOLDOWN_SECONDS": "300",
    }
    try:
        async with fresh_postgres_database() as url, cluster(tmp_path, url, env=env) as c:
            workspace = await c.create_workspace("Breaker")
            admin = c.token(workspace, "admin")
            # One stream on each replica (direct, so the rotation is certain).
            clients = [
                ReplicaClient(channel, admin, workspace, f"b{i}")
                for i, channel in enumerate(c.direct)
            ]
            for i, client in enumerate(clients):
                await client.open()
                client.replica = i
            # Turns one at a time, rotating over the replicas; a replica trusts a
            # CLOSED state read from Redis for half a second, so they are spaced.
            for n in range(4 * minimum):
                assert await clients[n % 3].turn() is not None  # the offline fallback
                await asyncio.sleep(0.6)
            failed_calls = provider.requests
            provider.mode = "ok"  # healthy again, but the breaker is open for 300 s
            for n in range(3):
                assert await clients[n].turn() is not None
            for client in clients:
                client.cancel()
            ledger.turns(4 * minimum + 3, sum(len(client.completed) for client in clients))
            ledger.fault("llm provider failure", failed_calls)
            ledger.note(
                f"replicas: the shared breaker opened after {failed_calls} provider "
                f"failures over 3 replicas (minimum_calls {minimum}); "
                f"{provider.requests - failed_calls} calls after it opened"
            )
            # Unshared, each replica would have needed `minimum` failures of its own.
            assert failed_calls == minimum, failed_calls
            assert provider.requests == failed_calls
    finally:
        await provider.stop()


# ---------------------------------------------------------------- a replica killed under load


@dataclass(frozen=True)
class Break:
    """A stream that ended under a client (or could not be opened again)."""

    label: str
    replica: int
    at: float
    code: str
    pending: str  # the client id of the message in flight, if any
    reopening: bool  # a new stream was refused (not one that was running)


async def retrying_loop(
    client: ReplicaClient, c: Cluster, stop: asyncio.Event, breaks: list[Break]
) -> None:
    """Turns until ``stop``. A broken stream is opened again through nginx and the
    message that was in flight is sent again with the same client id."""
    pending = ""
    while not stop.is_set():
        reopening = client.call is None
        try:
            if reopening:
                await client.open_on(c, conversation=client.conversation)
            pending = pending or client.next_id()
            if await client.turn(pending) is not None:
                pending = ""
            else:
                await asyncio.sleep(0.2)  # a failed turn: retried with the same id, paced
        except (aio.AioRpcError, AssertionError, TimeoutError) as error:
            at = time.monotonic()
            code = status_code(error)
            breaks.append(Break(client.label, client.replica, at, code, pending, reopening))
            client.cancel()
            client.call = None
            await asyncio.sleep(0.5)  # a new stream is refused while the dead one's lock lasts


async def test_a_replica_killed_under_load_costs_only_its_in_flight_turns(
    tmp_path: Path, ledger: Ledger
) -> None:
    streams = 60
    env = {
        "FENLO_OFFLINE_TOKENS_PER_SECOND": "100",
        "FENLO_CHAT_LOCK_SECONDS": "4",  # a dead replica's hold on a conversation
        "FENLO_REDIS_LEASE_SECONDS": "4",  # and its stream slots, end this soon
    }
    async with fresh_postgres_database() as url, cluster(tmp_path, url, env=env) as c:
        workspace = await c.create_workspace("Replica killed")
        admin = c.token(workspace, "admin")
        clients = [ReplicaClient(c.channel, admin, workspace, f"k{i}") for i in range(streams)]
        for client in clients:
            await client.open_on(c)
        placed = collections.Counter(client.replica for client in clients)
        assert set(placed) == {0, 1, 2}, placed
        victim = 1
        stop = asyncio.Event()
        breaks: list[Break] = []
        loops = [asyncio.create_task(retrying_loop(cl, c, stop, breaks)) for cl in clients]

        def state() -> str:
            done = collections.Counter(len(cl.completed) for cl in clients)
            errors = [e for cl in clients for e in cl.errors]
            return f"completed per client {dict(done)}; errors {errors[:5]}; breaks {breaks[:8]}"

        async def turns(more: int, within: float, what: str) -> None:
            try:
                await wait_turns(clients, more, within, what)
            except AssertionError as error:
                raise AssertionError(f"{error}; {state()}") from None

        try:
            await turns(3, 120, "turns before the kill")
            on_victim = {cl.label for cl in clients if cl.replica == victim}
            killed_at = time.monotonic()
            await c.replicas[victim].kill()
            ledger.fault("replica SIGKILL under load")
            await turns(3, 180, "turns after the kill")
            stop.set()
            async with asyncio.timeout(60):
                await asyncio.gather(*loops)
        finally:
            await stop_chat_loops(stop, loops, clients)

        attempted = sum(cl.attempted for cl in clients)
        ledger.turns(attempted, sum(len(cl.completed) for cl in clients))
        # Nothing but the killed replica's streams broke, and nothing else failed.
        hurt = [f"{b.label}@{b.replica}: {b.code}" for b in breaks if b.at < killed_at]
        hurt += [f"{b.label}: {b.code}" for b in breaks if b.label not in on_victim]
        hurt += [e for cl in clients for e in cl.errors]
        victims = [b for b in breaks if b.label in on_victim and not b.reopening]
        refused = collections.Counter(
            b.code for b in breaks if b.label in on_victim and b.reopening
        )
        retried = {b.label: b.pending for b in victims if b.pending}
        by_label = {cl.label: cl for cl in clients}
        answered = [cid for label, cid in retried.items() if cid in by_label[label].completed]
        without_answer = [
            cid
            for label, cid in retried.items()
            if cid in by_label[label].completed
            and not by_label[label].completed[cid].assistant_message
        ]
        ledger.note(
            f"replicas: {streams} streams {dict(placed)} through nginx; replica {victim} "
            f"SIGKILLed under load with {len(on_victim)} streams: {len(victims)} broke "
            f"({dict(collections.Counter(b.code for b in victims))}), reopened through nginx "
            f"(refused meanwhile: {dict(refused)}), {len(retried)} messages in flight retried "
            f"with their client id: {len(answered)} completed ({len(without_answer)} replayed "
            f"without an answer); failures elsewhere: {len(hurt)}"
        )
        ledger.found(lost=len(hurt), why=f"failures beyond the killed replica's: {hurt[:3]}")
        assert not hurt, hurt
        assert {b.label for b in victims} == on_victim  # each of its streams broke ...
        assert all(cl.replica != victim for cl in clients)  # ... and went on elsewhere
        assert len(answered) == len(retried)
        problems = 0
        for client in clients:
            problems += await check_conversation(ledger, c.channel, admin, client)
        assert problems == 0
        expected = await outbox_count(url, workspace)
        events = await read_events(c.channel, admin, workspace, count=expected)
        keys = check_events(ledger, events, expected, "from seq 0 after the replica kill")
        assert check_turn_events(ledger, keys, clients) == 0
