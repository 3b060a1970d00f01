"""Graceful shutdown: drain notices on open Chat streams, health NOT_SERVING during
the grace period, new chats refused, and a bounded stop -- in process and for the
``fenlo serve`` process on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fenlo.v1 import chat_pb2, chat_pb2_grpc, workspace_pb2, workspace_pb2_grpc
from fenlo_server.app import FenloApp, build_token_service
from fenlo_server.config import Settings
from tests.conftest import make_settings, start_app
from tests.helpers import Api, bearer, rich_error

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FENLO = Path(sys.executable).parent / "fenlo"

Launch = Callable[..., Awaitable[FenloApp]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_request(workspace_id: str) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(start=chat_pb2.StartChat(parent=f"workspaces/{workspace_id}"))


async def open_chat(stub: chat_pb2_grpc.ChatServiceStub, workspace_id: str, token: str) -> Any:
    """A started Chat stream (the first response, session_started, is consumed)."""
    call = stub.Chat(metadata=bearer(token), timeout=30)
    await call.write(start_request(workspace_id))
    first = await asyncio.wait_for(call.read(), 5)
    assert first.WhichOneof("kind") == "session_started", first
    return call


async def finished(task: asyncio.Task[None], within: float) -> bool:
    """Whether ``task`` finishes within ``within`` seconds (not cancelling it if not)."""
    done, _ = await asyncio.wait({task}, timeout=within)
    if done:
        task.result()
    return bool(done)


@pytest.fixture
async def launch(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Launch]:
    apps: list[FenloApp] = []

    async def _launch(**overrides: Any) -> FenloApp:
        directory = tmp_path / f"app{len(apps)}"
        directory.mkdir()
        shutil.copy(sqlite_template, directory / "fenlo.db")
        url = f"sqlite+aiosqlite:///{directory / 'fenlo.db'}"
        app = await start_app(make_settings(tmp_path, url, **overrides))
        apps.append(app)
        return app

    yield _launch
    for app in apps:
        await app.stop(grace=0)


# ---------------------------------------------------------------- in process


async def test_drain_notice_health_and_refusal_then_early_stop(launch: Launch) -> None:
    app = await launch()
    grace = 10.0
    async with Api(app) as api:
        workspace_id, token = await api.create_workspace("Draining")
        health = health_pb2_grpc.HealthStub(api.channel)
        chat = await open_chat(api.chat, workspace_id, token)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING

        started = time.monotonic()
        stopping = app.stop(grace=grace)
        assert app.stop() is stopping  # idempotent

        # The open stream is told to drain, with the grace period.
        notice = await asyncio.wait_for(chat.read(), 5)
        assert notice.WhichOneof("kind") == "draining"
        assert notice.draining.grace_period.ToTimedelta().total_seconds() == grace

        # Health says NOT_SERVING while the chat is still open, on Watch and on Check,
        # for the whole server and for each service.
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        for service in ("", "fenlo.v1.ChatService", "fenlo.v1.WorkspaceService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == NOT_SERVING, service
        assert app.chat_hub.open_sessions == 1
        assert not stopping.done()

        # A new chat is refused while draining.
        refused = api.chat.Chat(metadata=api.md(token), timeout=5)
        with pytest.raises(aio.AioRpcError) as caught:
            await refused.write(start_request(workspace_id))
            await refused.read()
        error = rich_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVER_DRAINING")

        # The client finishes: its stream ends cleanly and the stop completes early.
        watch.cancel()
        await chat.done_writing()
        assert await asyncio.wait_for(chat.read(), 5) is aio.EOF
        assert await chat.code() == grpc.StatusCode.OK
        assert await finished(stopping, 5)
        assert time.monotonic() - started < grace / 2
        assert app.chat_hub.open_sessions == 0

    # The server no longer answers.
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_with_a_health_watcher_still_completes_early(launch: Launch) -> None:
    """A health Watch is an endless stream; it must not hold the stop for the grace."""
    app = await launch()
    async with Api(app) as api:
        workspace_id, token = await api.create_workspace("Watched")
        chat = await open_chat(api.chat, workspace_id, token)
        watch = health_pb2_grpc.HealthStub(api.channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        started = time.monotonic()
        stopping = app.stop(grace=10.0)
        assert (await asyncio.wait_for(chat.read(), 5)).WhichOneof("kind") == "draining"
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        await chat.done_writing()
        assert await asyncio.wait_for(chat.read(), 5) is aio.EOF
        assert await finished(stopping, 5)
        assert time.monotonic() - started < 3
        # The watch saw NOT_SERVING during the grace period and then ended.
        assert await asyncio.wait_for(watch.read(), 5) is aio.EOF


async def test_stop_cuts_streams_kept_open_after_the_grace_period(launch: Launch) -> None:
    app = await launch()
    grace = 1.0
    async with Api(app) as api:
        workspace_id, token = await api.create_workspace("Stubborn")
        chats = [await open_chat(api.chat, workspace_id, token) for _ in range(2)]
        started = time.monotonic()
        stopping = app.stop(grace=grace)
        for chat in chats:
            assert (await asyncio.wait_for(chat.read(), 5)).WhichOneof("kind") == "draining"
        # The clients keep their streams open (they neither end nor close them).
        assert await finished(stopping, grace + 3)
        elapsed = time.monotonic() - started
        assert grace - 0.05 <= elapsed <= grace + 1.5
        for chat in chats:
            with pytest.raises(aio.AioRpcError) as caught:
                await asyncio.wait_for(chat.read(), 5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert app.chat_hub.open_sessions == 0


async def test_unary_calls_in_flight_during_drain_still_succeed(launch: Launch) -> None:
    app = await launch()
    async with Api(app) as api:
        workspace_id, token = await api.create_workspace("Busy")
        chat = await open_chat(api.chat, workspace_id, token)
        stopping = app.stop(grace=5.0)
        assert (await asyncio.wait_for(chat.read(), 5)).WhichOneof("kind") == "draining"
        # Until the chats are gone the server still answers ordinary calls.
        got = await api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
            metadata=api.md(token),
            timeout=5,
        )
        assert got.display_name == "Busy"
        await chat.done_writing()
        assert await finished(stopping, 5)


# ---------------------------------------------------------------- the fenlo serve process


class ServeProcess:
    """``fenlo serve`` on 127.0.0.1 with its own data directory; output to files."""

    def __init__(self, tmp_path: Path, grace: float) -> None:
        self.port = free_port()
        self.secret = "shutdown-test-secret-0123456789abcdef"
        self.stdout = tmp_path / "serve.out"
        self.stderr = tmp_path / "serve.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
        env.update(
            FENLO_DATA_DIR=str(tmp_path / "data"),
            FENLO_HOST="127.0.0.1",
            FENLO_PORT=str(self.port),
            FENLO_METRICS_PORT="0",
            FENLO_JWT_SECRET=self.secret,
            FENLO_SHUTDOWN_GRACE_SECONDS=str(grace),
            FENLO_LOG_FORMAT="json",
        )
        self.env = env
        self.cwd = tmp_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, within: float = 20.0) -> None:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                str(FENLO), "serve", env=self.env, cwd=self.cwd, stdout=out, stderr=err
            )
        expected = f"fenlo: listening on 127.0.0.1:{self.port}"
        deadline = time.monotonic() + within
        while expected not in self.stdout.read_text():
            if self.process.returncode is not None:
                raise AssertionError(f"fenlo serve exited early:\n{self.stderr.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"fenlo serve did not start:\n{self.stderr.read_text()}")
            await asyncio.sleep(0.05)

    async def exit_code(self, within: float) -> int | None:
        """The exit code, or None if the process is still running after ``within`` s."""
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            return None

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def token(self, workspace_id: str | None, role: str) -> str:
        settings = Settings(data_dir=self.cwd / "data", jwt_secret=self.secret)
        return build_token_service(settings).issue(
            subject="shutdown-test", workspace_id=workspace_id, roles=[role], ttl_seconds=600
        )

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.stderr.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


async def chat_on_process(serve: ServeProcess, channel: aio.Channel) -> tuple[str, Any]:
    """Create a workspace on the running process and open a Chat stream in it."""
    workspaces = workspace_pb2_grpc.WorkspaceServiceStub(channel)
    created = await workspaces.CreateWorkspace(
        workspace_pb2.CreateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(display_name="Process")
        ),
        metadata=bearer(serve.token(None, "platform_admin")),
        timeout=10,
    )
    workspace_id = created.name.split("/")[1]
    chat = await open_chat(
        chat_pb2_grpc.ChatServiceStub(channel), workspace_id, serve.token(workspace_id, "service")
    )
    return workspace_id, chat


async def test_sigterm_drains_and_exits_zero_within_the_grace(tmp_path: Path) -> None:
    grace = 1.5
    serve = ServeProcess(tmp_path, grace)
    try:
        await serve.start()
        assert serve.process is not None
        async with aio.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
            workspace_id, chat = await chat_on_process(serve, channel)
            started = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            notice = await asyncio.wait_for(chat.read(), 5)
            assert notice.WhichOneof("kind") == "draining"
            assert notice.draining.grace_period.ToTimedelta().total_seconds() == grace
            # The client keeps its stream open; the process still exits, cleanly.
            code = await serve.exit_code(grace + 5)
            elapsed = time.monotonic() - started
            assert code == 0, serve.stderr.read_text()
            assert grace - 0.1 <= elapsed <= grace + 3
            with pytest.raises(aio.AioRpcError) as caught:
                await asyncio.wait_for(chat.read(), 5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await serve.kill()
    logs = serve.log_lines()
    assert "Traceback" not in serve.stderr.read_text()
    [shutting] = [line for line in logs if line["message"] == "shutting down"]
    assert (shutting["grace_seconds"], shutting["open_chat_streams"]) == (grace, 1)
    assert any(line["message"] == "stopped" for line in logs)
    chat_lines = [line for line in logs if line.get("method") == "/fenlo.v1.ChatService/Chat"]
    assert [(line["logger"], line["workspace"]) for line in chat_lines] == [
        ("fenlo.rpc", workspace_id)
    ]


async def test_sigint_exits_zero_early_once_chats_close(tmp_path: Path) -> None:
    grace = 10.0
    serve = ServeProcess(tmp_path, grace)
    try:
        await serve.start()
        assert serve.process is not None
        async with aio.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
            _, chat = await chat_on_process(serve, channel)
            health = health_pb2_grpc.HealthStub(channel)
            started = time.monotonic()
            serve.process.send_signal(signal.SIGINT)
            notice = await asyncio.wait_for(chat.read(), 5)
            assert notice.WhichOneof("kind") == "draining"
            status = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert status.status == NOT_SERVING
            await chat.done_writing()
            assert await asyncio.wait_for(chat.read(), 5) is aio.EOF
            code = await serve.exit_code(grace)
            assert code == 0, serve.stderr.read_text()
            assert time.monotonic() - started < 5
    finally:
        await serve.kill()
    stderr = serve.stderr.read_text()
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
