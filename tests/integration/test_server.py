"""The server as a whole: health, reflection, metrics, transport limits, deadlines,
the per-RPC log line, INTERNAL errors with correlation ids through every handler
shape, and TLS. Each test runs a real in-process grpc.aio server on port 0."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import descriptor_pb2, wrappers_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fenlo.v1 import chat_pb2, workspace_pb2, workspace_pb2_grpc
from fenlo_server.app import SERVICES, FenloApp
from fenlo_server.auth import permissions
from fenlo_server.errors import FailedPrecondition, Reason
from tests.conftest import make_settings, shared_embedders, start_app
from tests.helpers import Api, bearer, rich_error

GET_WORKSPACE = "/fenlo.v1.WorkspaceService/GetWorkspace"
UPDATE_WORKSPACE = "/fenlo.v1.WorkspaceService/UpdateWorkspace"
CHAT = "/fenlo.v1.ChatService/Chat"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _contract_services() -> tuple[str, ...]:
    """Every service of every generated fenlo.v1 module: a new one cannot be missed."""
    import importlib
    import pkgutil

    import fenlo.v1

    names = []
    for module in pkgutil.iter_modules(fenlo.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"fenlo.v1.{module.name}").DESCRIPTOR
            names += [s.full_name for s in descriptor.services_by_name.values()]
    return tuple(sorted(names))


FENLO_SERVICES = _contract_services()

Launch = Callable[..., Awaitable[FenloApp]]


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(predicate: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (for at most ``within`` s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


def rpc_records(caplog: pytest.LogCaptureFixture, method: str) -> list[logging.LogRecord]:
    """The ``fenlo.rpc`` log lines of ``method``."""
    return [
        r for r in caplog.records if r.name == "fenlo.rpc" and getattr(r, "method", None) == method
    ]


def copy_sqlite(template: Path, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, directory / "fenlo.db")
    return f"sqlite+aiosqlite:///{directory / 'fenlo.db'}"


@pytest.fixture
async def launch(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Launch]:
    """Start apps with custom settings on fresh SQLite copies; stop them afterwards."""
    apps: list[FenloApp] = []

    async def _launch(**overrides: Any) -> FenloApp:
        url = copy_sqlite(sqlite_template, tmp_path / f"app{len(apps)}")
        app = await start_app(make_settings(tmp_path, url, **overrides))
        apps.append(app)
        return app

    yield _launch
    for app in apps:
        await app.stop(grace=0)


# ---------------------------------------------------------------- health and reflection


@pytest.mark.parametrize("service", ["", *FENLO_SERVICES])
async def test_health_check_serving_without_credentials(sqlite_api: Api, service: str) -> None:
    health = health_pb2_grpc.HealthStub(sqlite_api.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_services_match_the_contract(sqlite_api: Api) -> None:
    assert set(SERVICES) == set(FENLO_SERVICES)
    health = health_pb2_grpc.HealthStub(sqlite_api.channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="fenlo.v1.NoSuch"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_watch_streams_serving_without_credentials(sqlite_api: Api) -> None:
    health = health_pb2_grpc.HealthStub(sqlite_api.channel)
    call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    try:
        first = await call.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        call.cancel()


async def test_reflection_lists_services_without_credentials(sqlite_api: Api) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(sqlite_api.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="fenlo.v1.ChatService"),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=5)]
    assert len(responses) == 2
    listed = {s.name for s in responses[0].list_services_response.service}
    assert set(FENLO_SERVICES) <= listed
    assert "grpc.health.v1.Health" in listed
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    chat_file = next(f for f in files if f.name == "fenlo/v1/chat.proto")
    assert [s.name for s in chat_file.service] == ["ChatService"]


# ---------------------------------------------------------------- metrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _rpc_total(text: str, method: str, code: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "fenlo_rpc_total"
                and sample.labels.get("method") == method
                and sample.labels.get("code") == code
            ):
                return float(sample.value)
    return 0.0


async def test_metrics_endpoint_counts_rpcs_by_method_and_code(launch: Launch) -> None:
    port = free_port()
    app = await launch(metrics_port=port)
    assert app.metrics_port == port
    async with Api(app) as api:
        workspace_id, token = await api.create_workspace("Metered")
        before = await asyncio.to_thread(_scrape, port)
        await api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
            metadata=api.md(token),
        )
        with pytest.raises(aio.AioRpcError):
            await api.workspaces.GetWorkspace(
                workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}")
            )
        after = await asyncio.to_thread(_scrape, port)
    assert "fenlo_rpc_total{" in after
    assert _rpc_total(after, GET_WORKSPACE, "OK") == _rpc_total(before, GET_WORKSPACE, "OK") + 1
    assert (
        _rpc_total(after, GET_WORKSPACE, "UNAUTHENTICATED")
        == _rpc_total(before, GET_WORKSPACE, "UNAUTHENTICATED") + 1
    )
    assert f'fenlo_rpc_duration_seconds_count{{method="{GET_WORKSPACE}"}}' in after


async def test_metrics_endpoint_closes_when_the_server_stops(launch: Launch) -> None:
    port = free_port()
    app = await launch(metrics_port=port)
    assert "fenlo_rpc_total" in await asyncio.to_thread(_scrape, port)
    await app.stop(grace=0)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(_scrape, port)
    # The port is free again: a second server in this process can serve metrics on it.
    again = await launch(metrics_port=port)
    assert again.metrics_port == port
    assert "fenlo_rpc_total" in await asyncio.to_thread(_scrape, port)


async def test_metrics_port_zero_disables_the_endpoint(sqlite_app: FenloApp) -> None:
    assert sqlite_app.settings.metrics_port == 0
    assert sqlite_app.metrics_port is None


# ---------------------------------------------------------------- limits


async def test_message_larger_than_max_receive_is_resource_exhausted(launch: Launch) -> None:
    app = await launch(max_receive_message_bytes=64 * 1024)
    async with Api(app) as api:
        workspace_id, token = await api.create_workspace("Small")
        big = workspace_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                name=f"workspaces/{workspace_id}",
                settings=workspace_pb2.WorkspaceSettings(system_prompt="x" * (80 * 1024)),
            ),
        )
        assert big.ByteSize() > 64 * 1024
        with pytest.raises(aio.AioRpcError) as caught:
            await api.workspaces.UpdateWorkspace(big, metadata=api.md(token), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The connection and the server are fine: a request under the limit succeeds.
        small = workspace_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                name=f"workspaces/{workspace_id}",
                settings=workspace_pb2.WorkspaceSettings(system_prompt="y" * 20000),
            ),
        )
        updated = await api.workspaces.UpdateWorkspace(small, metadata=api.md(token), timeout=5)
        assert updated.settings.system_prompt == "y" * 20000


async def test_text_length_limits_are_invalid_argument_with_field_violations(api: Api) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await api.create_workspace("n" * 201)
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert error.domain == "fenlo.ai"
    assert error.violations == [
        ("workspace.display_name", "must be at most 200 characters, got 201")
    ]

    # Every bad field is reported at once.
    with pytest.raises(aio.AioRpcError) as caught:
        await api.create_workspace(
            "",
            settings=workspace_pb2.WorkspaceSettings(
                assistant_name="a" * 101, system_prompt="p" * 20001
            ),
        )
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.violations] == [
        "workspace.display_name",
        "workspace.settings.assistant_name",
        "workspace.settings.system_prompt",
    ]

    # Exactly at the limits is fine.
    workspace_id, token = await api.create_workspace(
        "n" * 200, settings=workspace_pb2.WorkspaceSettings(assistant_name="a" * 100)
    )
    got = await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
        metadata=api.md(token),
    )
    assert got.display_name == "n" * 200


# ---------------------------------------------------------------- deadlines


async def test_unary_deadline_exceeded_and_server_stays_healthy(sqlite_api: Api) -> None:
    workspace_id, token = await sqlite_api.create_workspace("Hurry")
    request = workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}")
    with pytest.raises(aio.AioRpcError) as caught:
        await sqlite_api.workspaces.GetWorkspace(
            request, metadata=sqlite_api.md(token), timeout=0.000_001
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    got = await sqlite_api.workspaces.GetWorkspace(
        request, metadata=sqlite_api.md(token), timeout=5
    )
    assert got.display_name == "Hurry"


async def test_stream_deadline_is_enforced_by_the_server(
    sqlite_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fenlo.rpc")
    workspace_id, token = await sqlite_api.create_workspace(
        "Deadline", quotas=workspace_pb2.WorkspaceQuotas(concurrent_chat_streams=1)
    )
    start = chat_pb2.ChatRequest(start=chat_pb2.StartChat(parent=f"workspaces/{workspace_id}"))
    call = sqlite_api.chat.Chat(metadata=sqlite_api.md(token), timeout=1.0)
    await call.write(start)
    first = await call.read()
    assert first.WhichOneof("kind") == "session_started"
    assert sqlite_api.app.chat_hub.open_sessions == 1
    with pytest.raises(aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The server cancelled its side: the session is gone and logged as DEADLINE_EXCEEDED.
    await eventually(lambda: sqlite_api.app.chat_hub.open_sessions == 0)
    record = (await eventually(lambda: rpc_records(caplog, CHAT)))[-1]
    assert record.code == "DEADLINE_EXCEEDED"
    assert record.workspace == workspace_id

    # Its concurrent-stream lease was released (the quota is 1) and the server is healthy.
    again = sqlite_api.chat.Chat(metadata=sqlite_api.md(token), timeout=5)
    try:
        await again.write(start)
        assert (await again.read()).WhichOneof("kind") == "session_started"
    finally:
        again.cancel()
    # A client that cancels long before its deadline is logged as CANCELLED.
    await eventually(lambda: len(rpc_records(caplog, CHAT)) == 2)
    assert rpc_records(caplog, CHAT)[-1].code == "CANCELLED"
    health = health_pb2_grpc.HealthStub(sqlite_api.channel)
    status = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- the per-RPC log line


async def test_one_structured_log_line_per_rpc(
    sqlite_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fenlo.rpc")
    workspace_id, token = await sqlite_api.create_workspace("Logged")
    other_id, _ = await sqlite_api.create_workspace("Other")
    caplog.clear()

    await sqlite_api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
        metadata=sqlite_api.md(token),
    )
    [ok] = await eventually(lambda: rpc_records(caplog, GET_WORKSPACE))
    assert ok.levelno == logging.INFO
    assert (ok.method, ok.workspace, ok.code, ok.subject) == (
        GET_WORKSPACE,
        workspace_id,
        "OK",
        "tester",
    )
    assert isinstance(ok.duration_ms, float)
    assert ok.duration_ms >= 0

    # No credentials: UNAUTHENTICATED, no workspace.
    caplog.clear()
    with pytest.raises(aio.AioRpcError) as caught:
        await sqlite_api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}")
        )
    assert rich_error(caught.value).reason == "CREDENTIALS_MISSING"
    [unauthenticated] = await eventually(lambda: rpc_records(caplog, GET_WORKSPACE))
    assert unauthenticated.code == "UNAUTHENTICATED"
    assert unauthenticated.workspace is None

    # A role the permission table refuses: PERMISSION_DENIED, with the caller's workspace.
    caplog.clear()
    agent = sqlite_api.token(workspace_id, "agent", subject="agent-1")
    with pytest.raises(aio.AioRpcError) as caught:
        await sqlite_api.workspaces.UpdateWorkspace(
            workspace_pb2.UpdateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(
                    name=f"workspaces/{workspace_id}", display_name="Renamed"
                )
            ),
            metadata=sqlite_api.md(agent),
        )
    assert rich_error(caught.value).reason == "PERMISSION_DENIED_ROLE"
    [denied] = await eventually(lambda: rpc_records(caplog, UPDATE_WORKSPACE))
    assert (denied.code, denied.workspace, denied.subject) == (
        "PERMISSION_DENIED",
        workspace_id,
        "agent-1",
    )

    # Another workspace's resource: PERMISSION_DENIED from the handler.
    caplog.clear()
    with pytest.raises(aio.AioRpcError) as caught:
        await sqlite_api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{other_id}"),
            metadata=sqlite_api.md(token),
        )
    assert rich_error(caught.value).reason == "PERMISSION_DENIED_WORKSPACE"
    [cross] = await eventually(lambda: rpc_records(caplog, GET_WORKSPACE))
    assert (cross.code, cross.workspace) == ("PERMISSION_DENIED", workspace_id)

    # A handler that aborts by itself (health, unknown service) logs its real code.
    caplog.clear()
    health = health_pb2_grpc.HealthStub(sqlite_api.channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    [health_line] = await eventually(lambda: rpc_records(caplog, HEALTH_CHECK))
    assert health_line.code == "NOT_FOUND"
    assert health_line.workspace is None


# ---------------------------------------------------------------- unexpected errors

TEST_SERVICE = "fenlo.v1.TestService"
StringValue = wrappers_pb2.StringValue
SECRET = "db-password-hunter2"


class Misbehaving:
    """Handlers of a test-only service in each RPC shape and handler style.

    A request's value says what to do: ``ok`` answers normally, ``boom`` raises
    an unexpected exception after one response, ``fenlo`` raises a domain error
    after one response.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    @staticmethod
    def _act(value: str) -> None:
        if value == "boom":
            raise RuntimeError(f"unexpected failure; {SECRET}")
        if value == "fenlo":
            raise FailedPrecondition(
                Reason.ERROR_REASON_CONVERSATION_CLOSED, "the conversation is closed"
            )

    async def unary(self, request: StringValue, context: Any) -> StringValue:
        self.calls.append("Unary")
        self._act(request.value)
        return StringValue(value=f"unary:{request.value}")

    async def write_stream(self, request: StringValue, context: Any) -> None:
        self.calls.append("WriteStream")
        await context.write(StringValue(value="write:1"))
        self._act(request.value)
        await context.write(StringValue(value="write:2"))

    async def gen_stream(self, request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        self.calls.append("GenStream")
        yield StringValue(value="gen:1")
        self._act(request.value)
        yield StringValue(value="gen:2")

    async def write_bidi(self, requests: AsyncIterator[StringValue], context: Any) -> None:
        self.calls.append("WriteBidi")
        async for request in requests:
            await context.write(StringValue(value=f"echo:{request.value}"))
            self._act(request.value)

    async def gen_bidi(
        self, requests: AsyncIterator[StringValue], context: Any
    ) -> AsyncIterator[StringValue]:
        self.calls.append("GenBidi")
        async for request in requests:
            yield StringValue(value=f"echo:{request.value}")
            self._act(request.value)

    def handler(self) -> grpc.GenericRpcHandler:
        codec = {
            "request_deserializer": StringValue.FromString,
            "response_serializer": StringValue.SerializeToString,
        }
        return grpc.method_handlers_generic_handler(
            TEST_SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **codec),
                "Unlisted": grpc.unary_unary_rpc_method_handler(self.unary, **codec),
                "WriteStream": grpc.unary_stream_rpc_method_handler(self.write_stream, **codec),
                "GenStream": grpc.unary_stream_rpc_method_handler(self.gen_stream, **codec),
                "WriteBidi": grpc.stream_stream_rpc_method_handler(self.write_bidi, **codec),
                "GenBidi": grpc.stream_stream_rpc_method_handler(self.gen_bidi, **codec),
            },
        )


class ProbeClient:
    """Calls the test service on a real channel; returns (responses, error)."""

    def __init__(self, channel: aio.Channel) -> None:
        self._channel = channel

    def _path(self, method: str) -> str:
        return f"/{TEST_SERVICE}/{method}"

    async def call(
        self, method: str, value: str | None, token: str | None
    ) -> tuple[list[str], aio.AioRpcError | None]:
        """Call ``method``; for the bidi methods send ``first`` and then ``value``, or
        nothing when ``value`` is None (to see a refusal without racing it)."""
        metadata = bearer(token) if token else None
        codec: dict[str, Any] = {
            "request_serializer": StringValue.SerializeToString,
            "response_deserializer": StringValue.FromString,
        }
        received: list[str] = []
        try:
            if method in ("Unary", "Unlisted"):
                reply = await self._channel.unary_unary(self._path(method), **codec)(
                    StringValue(value=value or "ok"), metadata=metadata, timeout=5
                )
                received.append(reply.value)
            elif method.endswith("Stream"):
                stream = self._channel.unary_stream(self._path(method), **codec)(
                    StringValue(value=value or "ok"), metadata=metadata, timeout=5
                )
                async for reply in stream:
                    received.append(reply.value)
            else:
                # One request at a time, each after the previous answer: a write after
                # the server has ended the call would fail on the client side instead.
                bidi = self._channel.stream_stream(self._path(method), **codec)(
                    metadata=metadata, timeout=5
                )
                if value is not None:
                    await bidi.write(StringValue(value="first"))
                    received.append((await bidi.read()).value)
                    await bidi.write(StringValue(value=value))
                    if value == "ok":
                        await bidi.done_writing()
                while (reply := await bidi.read()) is not aio.EOF:
                    received.append(reply.value)
        except aio.AioRpcError as error:
            return received, error
        return received, None


@pytest.fixture
async def misbehaving(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Misbehaving, Api, ProbeClient]]:
    """A server with the test service registered before it starts, and listed in the
    permission table for the agent role (test configuration; nothing is mocked)."""
    for method in ("Unary", "WriteStream", "GenStream", "WriteBidi", "GenBidi"):
        monkeypatch.setitem(
            permissions.RPC_ROLES, f"/{TEST_SERVICE}/{method}", frozenset({"agent"})
        )
    url = copy_sqlite(sqlite_template, tmp_path / "misbehaving")
    app = await FenloApp.create(make_settings(tmp_path, url), embedders=shared_embedders())
    service = Misbehaving()
    try:
        app.server.add_generic_rpc_handlers((service.handler(),))
        await app.start()
        async with Api(app) as api:
            yield service, api, ProbeClient(api.channel)
    finally:
        await app.stop(grace=0)


STREAMING = ("WriteStream", "GenStream", "WriteBidi", "GenBidi")
# What each streaming method sends before it fails on the request ``value``.
BEFORE_FAILURE = {
    "WriteStream": ["write:1"],
    "GenStream": ["gen:1"],
    "WriteBidi": ["echo:first", "echo:{value}"],
    "GenBidi": ["echo:first", "echo:{value}"],
}

# What each streaming method sends on ``ok``.
NORMAL = {
    "WriteStream": ["write:1", "write:2"],
    "GenStream": ["gen:1", "gen:2"],
    "WriteBidi": ["echo:first", "echo:ok"],
    "GenBidi": ["echo:first", "echo:ok"],
}


def before_failure(method: str, value: str) -> list[str]:
    return [text.format(value=value) for text in BEFORE_FAILURE[method]]


async def test_unexpected_exception_is_internal_with_correlation_id(
    misbehaving: tuple[Misbehaving, Api, ProbeClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fenlo")
    _, api, client = misbehaving
    workspace_id, _ = await api.create_workspace("Broken")
    agent = api.token(workspace_id, "agent")

    assert await client.call("Unary", "ok", agent) == (["unary:ok"], None)

    received, error = await client.call("Unary", "boom", agent)
    assert received == []
    assert error is not None
    rich = rich_error(error)
    assert rich.code == grpc.StatusCode.INTERNAL
    assert (rich.reason, rich.domain) == ("INTERNAL", "fenlo.ai")
    correlation_id = rich.metadata["correlation_id"]
    assert len(correlation_id) >= 16
    assert correlation_id in rich.message
    for text in (rich.message, error.details() or ""):
        assert SECRET not in text
        assert "Traceback" not in text
        assert "RuntimeError" not in text

    # The log has the traceback under the same correlation id ...
    [report] = [
        r
        for r in caplog.records
        if r.name == "fenlo.errors" and getattr(r, "correlation_id", None) == correlation_id
    ]
    assert report.levelno == logging.ERROR
    assert report.method == f"/{TEST_SERVICE}/Unary"
    assert report.exc_info is not None
    assert isinstance(report.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text
    assert SECRET in caplog.text
    # ... and so does the RPC's own log line.
    [line] = await eventually(lambda: rpc_records(caplog, f"/{TEST_SERVICE}/Unary")[-1:])
    assert (line.code, line.correlation_id, line.workspace) == (
        "INTERNAL",
        correlation_id,
        workspace_id,
    )


@pytest.mark.parametrize("method", STREAMING)
async def test_streaming_handlers_pass_through_every_interceptor(
    misbehaving: tuple[Misbehaving, Api, ProbeClient],
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    caplog.set_level(logging.INFO, logger="fenlo")
    service, api, client = misbehaving
    workspace_id, admin = await api.create_workspace("Streams")
    agent = api.token(workspace_id, "agent")
    path = f"/{TEST_SERVICE}/{method}"

    # Authentication runs before the handler.
    received, error = await client.call(method, None, None)
    assert received == []
    assert error is not None
    assert rich_error(error).code == grpc.StatusCode.UNAUTHENTICATED
    assert rich_error(error).reason == "CREDENTIALS_MISSING"
    # So does the permission table (only agent is listed for the test methods).
    received, error = await client.call(method, None, admin)
    assert error is not None
    assert rich_error(error).reason == "PERMISSION_DENIED_ROLE"
    assert service.calls == []

    # A normal stream.
    received, error = await client.call(method, "ok", agent)
    assert error is None
    assert received == NORMAL[method]
    assert service.calls == [method]

    # An unexpected exception after a first response: that response, then INTERNAL.
    received, error = await client.call(method, "boom", agent)
    assert received == before_failure(method, "boom")
    assert error is not None
    rich = rich_error(error)
    assert (rich.code, rich.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    correlation_id = rich.metadata["correlation_id"]
    assert SECRET not in rich.message
    assert "Traceback" not in rich.message
    assert any(
        r.name == "fenlo.errors"
        and getattr(r, "correlation_id", None) == correlation_id
        and r.exc_info is not None
        for r in caplog.records
    )

    # A domain error after a first response keeps its code and reason.
    received, error = await client.call(method, "fenlo", agent)
    assert received == before_failure(method, "fenlo")
    assert error is not None
    rich = rich_error(error)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_CLOSED")

    await eventually(lambda: len(rpc_records(caplog, path)) >= 5)
    codes = [r.code for r in rpc_records(caplog, path)]
    assert codes == [
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "OK",
        "INTERNAL",
        "FAILED_PRECONDITION",
    ]


async def test_method_missing_from_the_permission_table_is_refused(
    misbehaving: tuple[Misbehaving, Api, ProbeClient],
) -> None:
    service, api, client = misbehaving
    workspace_id, admin = await api.create_workspace("Closed")
    for token in (admin, api.token(workspace_id, "agent"), api.token(workspace_id, "service")):
        _, error = await client.call("Unlisted", "ok", token)
        assert error is not None
        assert rich_error(error).code == grpc.StatusCode.PERMISSION_DENIED
        assert rich_error(error).reason == "PERMISSION_DENIED_ROLE"
    assert service.calls == []


# ---------------------------------------------------------------- TLS


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_tls(launch: Launch, tmp_path: Path) -> None:
    cert_file, key_file = self_signed_certificate(tmp_path)
    app = await launch(tls_cert_file=cert_file, tls_key_file=key_file)
    assert app.tls
    target = f"127.0.0.1:{app.port}"
    token = app.tokens.issue(
        subject="platform", workspace_id=None, roles=["platform_admin"], ttl_seconds=600
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
    async with aio.secure_channel(target, credentials) as channel:
        workspaces = workspace_pb2_grpc.WorkspaceServiceStub(channel)
        created = await workspaces.CreateWorkspace(
            workspace_pb2.CreateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(display_name="Secure")
            ),
            metadata=bearer(token),
            timeout=5,
        )
        got = await workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=created.name), metadata=bearer(token), timeout=5
        )
        assert got.display_name == "Secure"
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING

    # A plaintext channel gets no answer from the TLS port.
    async with aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # A TLS channel that does not trust the certificate is refused too.
    other = tmp_path / "other"
    other.mkdir()
    other_cert, _ = self_signed_certificate(other)
    untrusted = grpc.ssl_channel_credentials(root_certificates=other_cert.read_bytes())
    async with aio.secure_channel(target, untrusted) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
