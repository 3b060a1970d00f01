"""RedisBreakers against a real Redis: the state machine of the local breakers,
shared by replicas, and what happens while Redis is away and when it comes back.

The state-machine scenarios are those of tests/unit/test_breaker.py. Tests that
use the shared Redis (FENLO_TEST_REDIS_URL) give themselves a key prefix and
delete their keys afterwards. The restart test runs a redis-server of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from fenlo_server import metrics
from fenlo_server.llm.breaker import RedisBreakers, State
from fenlo_server.metrics import REGISTRY
from tests.unit.test_breaker import (
    POLICY,
    SCENARIOS,
    FakeClock,
    Run,
    Scenario,
    breaker_metric,
    scenario_id,
    state_changes,
    unique_provider,
)

START = 1_700_000_000.0  # the fake wall clock's start: a realistic magnitude for Redis


def redis_available_metric() -> float | None:
    return REGISTRY.get_sample_value("fenlo_redis_available")


@pytest.fixture(autouse=True)
def _capture_and_restore(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger="fenlo.llm.breaker")
    yield
    metrics.REDIS_AVAILABLE.set(1)  # a process-wide gauge: leave it as other tests expect


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Shared:
    """The shared test Redis: clients on it, and one key prefix for this test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"fenlo:test:breaker:{uuid.uuid4().hex}:"
        self.clients: list[aioredis.Redis] = []

    def client(self) -> aioredis.Redis:
        client = aioredis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        self.clients.append(client)
        return client

    def breakers(self, clock: FakeClock, *, sync_seconds: float = 0.0) -> RedisBreakers:
        """A replica: its own connection, the fake clock for wall and monotonic time."""
        return RedisBreakers(
            self.client(),
            POLICY,
            prefix=self.prefix,
            sync_seconds=sync_seconds,
            clock=clock,
            monotonic=clock,
        )

    async def keys(self) -> list[bytes]:
        return [key async for key in self.clients[0].scan_iter(match=self.prefix + "*")]


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[Shared]:
    helper = Shared(redis_url)
    cleaner = helper.client()
    await cleaner.ping()
    try:
        yield helper
    finally:
        keys = await helper.keys()
        if keys:
            await cleaner.delete(*keys)
        for client in helper.clients:
            await client.aclose()


# The state machine, on Redis: every acquire asks Redis (sync_seconds=0).


@pytest.mark.parametrize("play", SCENARIOS, ids=scenario_id)
async def test_redis_breaker(
    play: Scenario, shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    breakers = shared.breakers(clock)
    await play(Run(breakers, clock, unique_provider(), caplog))
    assert breakers.redis_available  # every decision came from Redis...
    assert await shared.keys()  # ...which holds the breaker's state


# Two replicas on one Redis.


async def test_failures_through_one_replica_open_the_breaker_for_another(
    shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    provider = unique_provider()
    a = Run(shared.breakers(clock), clock, provider, caplog)
    b = Run(shared.breakers(clock), clock, provider, caplog)
    in_flight = await b.permit()  # B has seen it closed
    await a.open()
    assert await b.refused()
    assert b.state() is State.OPEN
    await b.breakers.record(in_flight, ok=True)  # too late to matter
    assert await b.refused()
    assert await a.refused()


async def test_probes_are_limited_across_replicas_and_a_success_anywhere_closes(
    shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    provider = unique_provider()
    a = Run(shared.breakers(clock), clock, provider, caplog)
    b = Run(shared.breakers(clock), clock, provider, caplog)
    await a.half_open()
    assert POLICY.half_open_probes == 2
    probe_a = await a.permit()
    probe_b = await b.permit()
    assert probe_a.probe and probe_b.probe
    assert await a.refused()
    assert await b.refused()
    await b.breakers.record(probe_b, ok=True)
    assert b.state() is State.CLOSED
    permit = await a.permit()  # A learns it from Redis
    assert not permit.probe
    assert a.state() is State.CLOSED
    await a.breakers.record(probe_a, ok=True)
    await a.breakers.record(permit, ok=True)
    assert a.state() is State.CLOSED


async def test_a_probe_whose_replica_never_reports_back_is_given_back_after_its_lease(
    shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    provider = unique_provider()
    a = Run(shared.breakers(clock), clock, provider, caplog)
    b = Run(shared.breakers(clock), clock, provider, caplog)
    await a.half_open()
    lost = [await a.permit(), await a.permit()]  # replica A takes both probes and dies
    assert all(p.probe for p in lost)
    assert await b.refused()
    clock.advance(POLICY.probe_lease_seconds - 1)
    assert await b.refused()  # the leases still run
    clock.advance(2)
    probe = await b.permit()
    assert probe.probe
    await b.breakers.record(probe, ok=True)
    assert b.state() is State.CLOSED


async def test_a_replica_trusts_a_closed_state_for_sync_seconds_then_asks_again(
    shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    provider = unique_provider()
    a = Run(shared.breakers(clock), clock, provider, caplog)
    b = Run(shared.breakers(clock, sync_seconds=1.0), clock, provider, caplog)
    in_flight = await b.permit()  # B has seen it closed
    await a.open()
    clock.advance(0.5)
    assert not await b.refused()  # within sync_seconds: no round trip
    clock.advance(0.5)
    assert await b.refused()
    assert b.state() is State.OPEN
    await b.breakers.release(in_flight)


# Redis away: local state decides, calls stay fast, nothing raises.


class SilentServer:
    """Accepts connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client hangs up
        writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)


@pytest.fixture(params=["refused", "silent"])
async def dead_redis(request: pytest.FixtureRequest) -> AsyncIterator[SilentServer | None]:
    """A port where nothing listens, or a server that never answers."""
    if request.param == "refused":
        yield None
        return
    server = SilentServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_redis_down_falls_back_to_local_state_quickly(
    dead_redis: SilentServer | None, caplog: pytest.LogCaptureFixture
) -> None:
    port = dead_redis.port if dead_redis is not None else unused_port()
    client = aioredis.Redis(
        host="127.0.0.1", port=port, socket_timeout=0.1, socket_connect_timeout=0.1
    )
    breakers = RedisBreakers(client, POLICY, prefix="fenlo:test:unreachable:", sync_seconds=0)
    well, sick = unique_provider("well"), unique_provider("sick")
    try:
        started = time.monotonic()
        first = await breakers.acquire(well)
        assert time.monotonic() - started < 1.0
        assert first is not None and first.local
        assert not breakers.redis_available
        assert redis_available_metric() == 0
        assert any(
            r.getMessage().startswith("redis unavailable for circuit breakers")
            for r in caplog.records
        )
        await breakers.record(first, ok=True)

        # Backed off: a burst of calls does not wait for Redis.
        slowest = 0.0
        burst_started = time.monotonic()
        for _ in range(50):
            call_started = time.monotonic()
            permit = await breakers.acquire(well)
            assert permit is not None and permit.local
            await breakers.record(permit, ok=True)
            slowest = max(slowest, time.monotonic() - call_started)
        assert slowest < 0.3
        assert time.monotonic() - burst_started < 1.0
        if dead_redis is not None:
            assert dead_redis.connections <= 2  # not one attempt per call

        # The local breakers refuse too, and report it.
        sick_run = Run(breakers, FakeClock(), sick, caplog)  # (no cool-down is waited for)
        await sick_run.open()
        assert await sick_run.refused()
        assert breaker_metric(sick) == 2
        assert state_changes(caplog, sick) == [("closed", "open")]
        await breakers.release(first)  # never raises either
        assert breakers.state(well) is State.CLOSED
    finally:
        await client.aclose()


# Redis restarted: a redis-server of our own, killed and started again.

REDIS_SERVER = shutil.which("redis-server")


class RedisProcess:
    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

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
            exited = self.process.returncode is not None
            assert not exited, (self.directory / "redis.log").read_text()
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
async def test_breakers_survive_a_redis_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(unused_port(), tmp_path)
    clock = FakeClock(START)
    clients: list[aioredis.Redis] = []

    def replica() -> RedisBreakers:
        client = aioredis.Redis(port=server.port, socket_timeout=0.25, socket_connect_timeout=0.25)
        clients.append(client)
        return RedisBreakers(client, POLICY, sync_seconds=0, clock=clock, monotonic=clock)

    try:
        await server.start()
        a, b = replica(), replica()
        opened, local, shared = (unique_provider(s) for s in ("opened", "local", "shared"))

        # Up: failures through A open the breaker for B.
        await Run(a, clock, opened, caplog).open()
        assert await Run(b, clock, opened, caplog).refused()
        assert breaker_metric(opened) == 2
        assert redis_available_metric() == 1

        await server.kill()

        # B never saw those failures itself: its local breaker is closed, and B says so.
        permit = await b.acquire(opened)
        assert permit is not None and permit.local
        assert b.state(opened) is State.CLOSED
        assert breaker_metric(opened) == 0
        assert redis_available_metric() == 0
        # A recorded them, so its local breaker is open.
        assert await a.acquire(opened) is None
        assert a.state(opened) is State.OPEN
        # Both keep working on local state.
        await Run(a, clock, local, caplog).open()
        assert await a.acquire(local) is None
        assert breaker_metric(local) == 2

        await server.start()  # again, on the same port, empty

        # Not asked again before the back-off is over.
        assert not a.redis_available
        assert await a.acquire(local) is None

        for _ in range(20):
            clock.advance(10.5)  # past the longest back-off
            await a.acquire("poll")
            await b.acquire("poll")
            if a.redis_available and b.redis_available:
                break
            await asyncio.sleep(0.05)
        assert a.redis_available and b.redis_available
        assert redis_available_metric() == 1
        assert any(r.getMessage() == "redis is back for circuit breakers" for r in caplog.records)

        # Redis decides again: the (empty) shared state is closed, and A reports it.
        permit = await a.acquire(local)
        assert permit is not None and not permit.local
        assert a.state(local) is State.CLOSED
        assert breaker_metric(local) == 0
        # Shared state works again.
        await Run(a, clock, shared, caplog).open()
        assert await Run(b, clock, shared, caplog).refused()
        assert b.state(shared) is State.OPEN
    finally:
        for client in clients:
            await client.aclose()
        await server.kill()
