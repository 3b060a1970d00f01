"""The Python SDK (``fenlo.Client``) against a real in-process Fenlo server: typed calls
with a token or an API key, errors with their reason and violations, the chat helper
(turns, interrupts, resume, agent messages, a failed turn), and the example of
docs/python-sdk.md. Retries and call options are checked against a small grpc.aio
server that fails on purpose."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

import fenlo
from fenlo.v1 import chat_pb2, conversation_pb2, workspace_pb2
from fenlo_server.app import FenloApp
from tests.conftest import _sqlite_url, make_settings, start_app

ROOT = Path(__file__).resolve().parents[2]
C = conversation_pb2
W = workspace_pb2


def platform_token(app: FenloApp) -> str:
    return app.tokens.issue(
        subject="platform", workspace_id=None, roles=["platform_admin"], ttl_seconds=600
    )


def admin_token(app: FenloApp, workspace: str) -> str:
    return app.tokens.issue(
        subject="tester",
        workspace_id=workspace.removeprefix("workspaces/"),
        roles=["admin"],
        ttl_seconds=600,
    )


@pytest.fixture
async def slow_app(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[FenloApp]:
    """A server whose offline answers stream slowly enough to interrupt."""
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    server = await start_app(make_settings(tmp_path, url, offline_tokens_per_second=20.0))
    yield server
    await server.stop(grace=0)


async def new_workspace(app: FenloApp, name: str = "SDK") -> tuple[str, str]:
    """Create a workspace through the SDK; return its name and an admin token."""
    async with fenlo.Client(f"127.0.0.1:{app.port}", token=platform_token(app)) as client:
        ws = await client.workspaces.CreateWorkspace(
            W.CreateWorkspaceRequest(workspace=W.Workspace(display_name=name))
        )
    return ws.name, admin_token(app, ws.name)


async def collect(chat: fenlo.ChatSession, text: str) -> list[chat_pb2.ChatResponse]:
    return [event async for event in chat.send(text)]


def kinds(events: list[chat_pb2.ChatResponse]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


def answer(events: list[chat_pb2.ChatResponse]) -> str:
    return "".join(e.delta.text for e in events if e.WhichOneof("kind") == "delta")


# -- unary calls and errors -------------------------------------------------------------


async def test_typed_calls_carry_the_token_and_creates_are_idempotent(
    sqlite_app: FenloApp,
) -> None:
    workspace, token = await new_workspace(sqlite_app, "Typed")
    async with fenlo.Client(f"127.0.0.1:{sqlite_app.port}", token=token) as client:
        ws = await client.workspaces.GetWorkspace(W.GetWorkspaceRequest(name=workspace))
        assert ws.display_name == "Typed"
        listed = await client.workspaces.ListWorkspaces(W.ListWorkspacesRequest())
        assert [w.name for w in listed.workspaces] == [workspace]

        request_id = str(uuid.uuid4())
        request = C.CreateConversationRequest(
            parent=workspace,
            conversation=C.Conversation(channel=C.CHANNEL_WEB),
            request_id=request_id,
        )
        first = await client.conversations.CreateConversation(request)
        again = await client.conversations.CreateConversation(request)
        assert first.name == again.name  # the same request_id: one conversation
        # Without a request_id the client fills a fresh one: a new conversation each time.
        other = await client.conversations.CreateConversation(
            C.CreateConversationRequest(parent=workspace)
        )
        assert other.name != first.name
        page = await client.conversations.ListConversations(
            C.ListConversationsRequest(parent=workspace)
        )
        assert {c.name for c in page.conversations} == {first.name, other.name}


async def test_errors_carry_code_reason_metadata_and_violations(sqlite_app: FenloApp) -> None:
    target = f"127.0.0.1:{sqlite_app.port}"
    workspace, token = await new_workspace(sqlite_app, "Errors")
    other, _ = await new_workspace(sqlite_app, "Other")
    async with fenlo.Client(target, token=token) as client:
        missing = f"{workspace}/conversations/01hzzzzzzzzzzzzzzzzzzzzzzz"
        with pytest.raises(fenlo.NotFound) as not_found:
            await client.conversations.GetConversation(C.GetConversationRequest(name=missing))
        error = not_found.value
        assert isinstance(error, fenlo.FenloError)
        assert (error.code, error.reason, error.domain) == (
            grpc.StatusCode.NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            "fenlo.ai",
        )
        assert error.metadata == {"resource": missing}
        assert error.reason_value == fenlo.v1.errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND

        # Another workspace's resource: permission is checked before existence.
        with pytest.raises(fenlo.PermissionDenied) as denied:
            await client.conversations.GetConversation(
                C.GetConversationRequest(name=f"{other}/conversations/01hzzzzzzzzzzzzzzzzzzzzzzz")
            )
        assert denied.value.reason == "PERMISSION_DENIED_WORKSPACE"

        with pytest.raises(fenlo.InvalidArgument) as invalid:
            await client.conversations.ListConversations(
                C.ListConversationsRequest(parent=workspace, page_size=-1)
            )
        assert invalid.value.reason == "INVALID_ARGUMENT"
        assert [v.field for v in invalid.value.violations] == ["page_size"]
        assert invalid.value.violations[0].description

    async with fenlo.Client(target) as anonymous:
        with pytest.raises(fenlo.Unauthenticated) as unauthenticated:
            await anonymous.workspaces.GetWorkspace(W.GetWorkspaceRequest(name=workspace))
        assert unauthenticated.value.reason == "CREDENTIALS_MISSING"

    async with fenlo.Client(target, token="not-a-token") as bad:
        with pytest.raises(fenlo.Unauthenticated) as invalid_token:
            await bad.workspaces.GetWorkspace(W.GetWorkspaceRequest(name=workspace))
        assert invalid_token.value.reason == "CREDENTIALS_INVALID"


async def test_api_key_auth(sqlite_app: FenloApp) -> None:
    target = f"127.0.0.1:{sqlite_app.port}"
    workspace, token = await new_workspace(sqlite_app, "Keys")
    async with fenlo.Client(target, token=token) as admin:
        created = await admin.workspaces.CreateApiKey(
            W.CreateApiKeyRequest(
                parent=workspace,
                api_key=W.ApiKey(display_name="bridge", roles=[W.ROLE_SERVICE]),
            )
        )
    assert created.secret.startswith("fk_")
    async with fenlo.Client(target, api_key=created.secret) as client:
        ws = await client.workspaces.GetWorkspace(W.GetWorkspaceRequest(name=workspace))
        assert ws.name == workspace
        async with client.chat(workspace) as chat:
            events = await collect(chat, "Hello")
        assert kinds(events)[-1] == "turn_completed"
    with pytest.raises(ValueError):
        fenlo.Client(target, token=token, api_key=created.secret)


# -- chat -----------------------------------------------------------------------------


async def test_chat_two_turns_then_resume(sqlite_app: FenloApp) -> None:
    workspace, token = await new_workspace(sqlite_app, "Chat")
    async with fenlo.Client(f"127.0.0.1:{sqlite_app.port}", token=token) as client:
        async with client.chat(
            workspace.removeprefix("workspaces/"),
            sentence_events=True,
            metadata={"source": "sdk-test"},
        ) as chat:
            assert chat.conversation.startswith(f"{workspace}/conversations/")
            assert not chat.session.resumed
            first = await collect(chat, "Hello there")
            second = await collect(chat, "Can you help me?")
            conversation = chat.conversation
        for events in (first, second):
            got = kinds(events)
            assert got[0] == "turn_started" and got[-1] == "turn_completed", got
            assert "delta" in got and "sentence" in got and "annotations" in got, got
            completed = events[-1].turn_completed
            assert completed.turn_id == events[0].turn_started.turn_id
            assert completed.assistant_message and not completed.interrupted
        assert first[0].turn_started.turn_id != second[0].turn_started.turn_id

        stored = await client.conversations.GetConversation(
            C.GetConversationRequest(name=conversation)
        )
        assert stored.metadata["source"] == "sdk-test"

        async with client.chat(conversation=conversation) as resumed:
            assert resumed.session.resumed
            assert resumed.conversation == conversation
            third = await collect(resumed, "Thanks")
        assert kinds(third)[-1] == "turn_completed"
        messages = await client.conversations.ListMessages(
            C.ListMessagesRequest(parent=conversation)
        )
        assert [m.text for m in messages.messages if m.role == C.MESSAGE_ROLE_USER] == [
            "Hello there",
            "Can you help me?",
            "Thanks",
        ]


async def test_interrupt_mid_answer_keeps_what_was_delivered(slow_app: FenloApp) -> None:
    workspace, token = await new_workspace(slow_app, "Barge-in")
    async with fenlo.Client(f"127.0.0.1:{slow_app.port}", token=token) as client:
        async with client.chat(workspace) as chat:
            events: list[chat_pb2.ChatResponse] = []
            # A question the prompt guard lets through, so the answer is generated (a
            # guard's refusal would be sent in one go, with nothing left to interrupt).
            async for event in chat.send("What do you offer, and what does it cost?"):
                events.append(event)
                deltas = [e for e in events if e.WhichOneof("kind") == "delta"]
                if len(deltas) == 2 and event.WhichOneof("kind") == "delta":
                    assert chat.turn_id == events[0].turn_started.turn_id
                    await chat.interrupt()
            delivered = answer(events[: events.index(deltas[1]) + 1])
            completed = events[-1].turn_completed
            assert "guard" not in completed.providers, completed
            assert completed.interrupted
            assert chat.turn_id == ""
            with pytest.raises(RuntimeError):
                await chat.interrupt()  # nothing is running
            after = await collect(chat, "OK")
            assert kinds(after)[-1] == "turn_completed"
            conversation = chat.conversation
        messages = await client.conversations.ListMessages(
            C.ListMessagesRequest(parent=conversation)
        )
        cut = messages.messages[1]
        assert cut.role == C.MESSAGE_ROLE_ASSISTANT
        assert cut.interrupted and cut.text == delivered


async def test_a_failed_turn_raises_and_the_session_goes_on(sqlite_app: FenloApp) -> None:
    workspace, token = await new_workspace(sqlite_app, "Failing")
    limit = sqlite_app.settings.max_user_text_chars
    async with (
        fenlo.Client(f"127.0.0.1:{sqlite_app.port}", token=token) as client,
        client.chat(workspace) as chat,
    ):
        with pytest.raises(fenlo.InvalidArgument) as failed:
            await collect(chat, "x" * (limit + 1))
        assert failed.value.reason == "INVALID_ARGUMENT"
        assert [v.field for v in failed.value.violations] == ["user_message.text"]
        events = await collect(chat, "Hello")
        assert kinds(events)[-1] == "turn_completed"


async def test_a_second_stream_on_a_busy_conversation_fails_to_start(
    sqlite_app: FenloApp,
) -> None:
    workspace, token = await new_workspace(sqlite_app, "Busy")
    async with (
        fenlo.Client(f"127.0.0.1:{sqlite_app.port}", token=token) as client,
        client.chat(workspace) as chat,
    ):
        with pytest.raises(fenlo.FailedPrecondition) as busy:
            async with client.chat(conversation=chat.conversation):
                pass
        assert busy.value.reason == "CONVERSATION_BUSY"


async def test_a_chat_without_access_fails_to_start(sqlite_app: FenloApp) -> None:
    target = f"127.0.0.1:{sqlite_app.port}"
    workspace, _ = await new_workspace(sqlite_app, "Mine")
    _, other_token = await new_workspace(sqlite_app, "Theirs")
    async with fenlo.Client(target, token=other_token) as client:
        with pytest.raises(fenlo.PermissionDenied) as denied:
            async with client.chat(workspace):
                pass
        assert denied.value.reason == "PERMISSION_DENIED_WORKSPACE"
    async with fenlo.Client(target) as anonymous:
        with pytest.raises(fenlo.Unauthenticated) as unauthenticated:
            async with anonymous.chat(workspace):
                pass
        assert unauthenticated.value.reason == "CREDENTIALS_MISSING"


async def test_agent_messages_while_idle_wait_in_pending_events(sqlite_app: FenloApp) -> None:
    workspace, token = await new_workspace(sqlite_app, "Agents")
    async with (
        fenlo.Client(f"127.0.0.1:{sqlite_app.port}", token=token) as client,
        client.chat(workspace) as chat,
    ):
        await collect(chat, "Hello")
        assert chat.pending_events() == []
        await client.conversations.PostAgentMessage(
            C.PostAgentMessageRequest(parent=chat.conversation, text="Sam here", author="Sam")
        )
        async with asyncio.timeout(10):
            pending = await chat.wait_pending()
        assert kinds(pending) == ["agent_message"]
        assert pending[0].agent_message.message.text == "Sam here"
        assert chat.pending_events() == []
        # The conversation is handed off now; a turn still completes (stored, unanswered).
        events = await collect(chat, "Thanks Sam")
        assert "agent_message" not in kinds(events)
        assert kinds(events)[-1] == "turn_completed"


async def test_the_example_in_the_docs_runs(sqlite_app: FenloApp) -> None:
    text = (ROOT / "docs" / "python-sdk.md").read_text()
    match = re.search(r"<!-- sdk-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/python-sdk.md lost its example"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "docs/python-sdk.md", "exec"), namespace)
    workspace, token = await new_workspace(sqlite_app, "Docs")
    seen = await namespace["example"](f"127.0.0.1:{sqlite_app.port}", token, workspace)
    assert seen["display_name"] == "Docs"
    assert seen["not_found"] == "RESOURCE_NOT_FOUND"
    assert seen["violations"] == ["page_size"]
    assert len(seen["answers"]) == 2 and all(seen["answers"])
    assert seen["resumed"] is True
    assert seen["agent"] == "Sam here"


# -- retries and call options, against a server that fails on purpose -----------------


def _rich(code: grpc.StatusCode, reason: str, retry_after: float | None = None) -> bytes:
    status = status_pb2.Status(code=code.value[0], message=reason.lower())
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="fenlo.ai"))
    if retry_after is not None:
        delay = duration_pb2.Duration(seconds=int(retry_after))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status.SerializeToString()


class FlakyWorkspaces:
    """A WorkspaceService that answers UNAVAILABLE a few times, then succeeds, and records
    what each attempt carried."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, list[dict[str, Any]]] = {}

    def _record(self, method: str, request: Any, context: aio.ServicerContext[Any, Any]) -> int:
        seen = self.attempts.setdefault(method, [])
        seen.append(
            {
                "metadata": dict(context.invocation_metadata() or ()),
                "time_remaining": context.time_remaining(),
                "request": request,
            }
        )
        return len(seen)

    async def _unavailable(self, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "dependency down",
            trailing_metadata=(
                ("grpc-status-details-bin", _rich(grpc.StatusCode.UNAVAILABLE, "X", 1.0)),
            ),
        )

    async def get(self, request: W.GetWorkspaceRequest, context: Any) -> W.Workspace:
        if self._record("GetWorkspace", request, context) <= self.failures:
            await self._unavailable(context)
        return W.Workspace(name=request.name, display_name="Flaky")

    async def create(self, request: W.CreateWorkspaceRequest, context: Any) -> W.Workspace:
        if self._record("CreateWorkspace", request, context) <= self.failures:
            await self._unavailable(context)
        return W.Workspace(name="workspaces/new", display_name=request.workspace.display_name)

    async def update(self, request: W.UpdateWorkspaceRequest, context: Any) -> W.Workspace:
        self._record("UpdateWorkspace", request, context)
        await self._unavailable(context)
        raise AssertionError("unreachable")

    async def list(self, request: W.ListWorkspacesRequest, context: Any) -> Any:
        self._record("ListWorkspaces", request, context)
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            trailing_metadata=(
                (
                    "grpc-status-details-bin",
                    _rich(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 3.0),
                ),
            ),
        )


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, FlakyWorkspaces]]:
    service = FlakyWorkspaces(failures=2)

    def handler(fn: Any, request_type: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )

    server = aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "fenlo.v1.WorkspaceService",
                {
                    "GetWorkspace": handler(service.get, W.GetWorkspaceRequest),
                    "CreateWorkspace": handler(service.create, W.CreateWorkspaceRequest),
                    "UpdateWorkspace": handler(service.update, W.UpdateWorkspaceRequest),
                    "ListWorkspaces": handler(service.list, W.ListWorkspacesRequest),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", service
    await server.stop(grace=0)


async def test_reads_and_creates_are_retried_on_unavailable(
    flaky: tuple[str, FlakyWorkspaces],
) -> None:
    target, service = flaky
    async with fenlo.Client(target, token="jwt-here", timeout=7.0) as client:
        ws = await client.workspaces.GetWorkspace(W.GetWorkspaceRequest(name="workspaces/a"))
        assert ws.display_name == "Flaky"
        created = await client.workspaces.CreateWorkspace(
            W.CreateWorkspaceRequest(workspace=W.Workspace(display_name="New"))
        )
        assert created.display_name == "New"
    gets = service.attempts["GetWorkspace"]
    assert len(gets) == 3
    for attempt in gets:
        assert attempt["metadata"]["authorization"] == "Bearer jwt-here"
        assert attempt["time_remaining"] is not None and attempt["time_remaining"] < 8.0
    creates = service.attempts["CreateWorkspace"]
    assert len(creates) == 3
    request_ids = {attempt["request"].request_id for attempt in creates}
    assert len(request_ids) == 1  # one id, filled by the client, the same on every attempt
    uuid.UUID(request_ids.pop())


async def test_updates_and_resource_exhausted_are_not_retried(
    flaky: tuple[str, FlakyWorkspaces],
) -> None:
    target, service = flaky
    async with fenlo.Client(target, api_key="fk_example") as client:
        with pytest.raises(fenlo.Unavailable) as unavailable:
            await client.workspaces.UpdateWorkspace(W.UpdateWorkspaceRequest())
        assert unavailable.value.retry_after == 1.0
        with pytest.raises(fenlo.ResourceExhausted) as exhausted:
            await client.workspaces.ListWorkspaces(W.ListWorkspacesRequest())
        assert exhausted.value.reason == "RATE_LIMITED"
        assert exhausted.value.retry_after == 3.0
    assert len(service.attempts["UpdateWorkspace"]) == 1
    assert len(service.attempts["ListWorkspaces"]) == 1
    assert service.attempts["ListWorkspaces"][0]["metadata"]["authorization"] == "Bearer fk_example"


async def test_without_retries_the_first_unavailable_is_raised(
    flaky: tuple[str, FlakyWorkspaces],
) -> None:
    target, service = flaky
    async with fenlo.Client(target, retries=False) as client:
        with pytest.raises(fenlo.Unavailable) as unavailable:
            await client.workspaces.GetWorkspace(W.GetWorkspaceRequest(name="workspaces/a"))
    assert unavailable.value.reason == "X"
    assert len(service.attempts["GetWorkspace"]) == 1
    assert "authorization" not in service.attempts["GetWorkspace"][0]["metadata"]


async def test_a_refused_connection_maps_to_unavailable_without_a_reason() -> None:
    async with fenlo.Client("127.0.0.1:1", timeout=5.0, retries=False) as client:
        with pytest.raises(fenlo.Unavailable) as refused:
            await client.workspaces.GetWorkspace(W.GetWorkspaceRequest(name="workspaces/a"))
    assert refused.value.reason == "" and refused.value.domain == ""
