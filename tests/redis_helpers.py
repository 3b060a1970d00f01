"""Two Fenlo servers on one database and one Redis (replicas), and a private
redis-server that a test may kill and restart."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from fenlo_server.app import REDIS_HEALTH, FenloApp
from fenlo_server.pipeline.analysis import guard_semantic
from tests.conftest import make_settings, shared_embedders, start_app
from tests.helpers import Api


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, on a free port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.port = unused_port()
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                assert self.process.returncode is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
            else:
                writer.close()
                await writer.wait_closed()
                return

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers,
        like a Redis stuck in a long command or behind a stalled network."""
        assert self.process is not None and self.process.returncode is None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)


@contextlib.asynccontextmanager
async def private_redis(directory: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(directory)
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, database_url: str, redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[Api, Api]]:
    """Two started servers sharing the database, Redis and secrets; an Api on each."""
    secrets: dict[str, Any] = {
        "jwt_secret": "replica-secret-" + uuid.uuid4().hex,
        "page_token_secret": "replica-pages-" + uuid.uuid4().hex,
        "redis_url": redis_url,
    }
    secrets.update(overrides)
    apps: list[FenloApp] = []
    apis: list[Api] = []
    await warm_models()
    try:
        for name in ("one", "two"):
            apps.append(await start_app(make_settings(tmp_path / name, database_url, **secrets)))
            apis.append(Api(apps[-1]))
        async with asyncio.timeout(10):  # an invalidation published before this is missed
            for app in apps:
                await app.invalidations.subscribed.wait()
        yield apis[0], apis[1]
    finally:
        for api in apis:
            await api.channel.close()
        for app in apps:
            await app.stop(grace=0)


async def warm_models() -> None:
    """Load the shared models before the servers start, so a first turn is not slow."""
    for embedder in shared_embedders():
        warm = getattr(embedder, "warm", None)
        if warm is not None:
            await warm()
        if embedder.model == guard_semantic.MODEL:
            await guard_semantic.shared(embedder).warm()


async def health(api: Api, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(api.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def redis_health(api: Api) -> int:
    return await health(api, REDIS_HEALTH)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.05
) -> None:
    """Wait (bounded) until ``check()`` is true."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(every)
