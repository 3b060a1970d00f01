"""Chat stream abuse (issue 10): what a hostile or broken client can do to a Chat
stream, and what the server must do about it.

Checked here: a flood of every kind of request (user messages far beyond the
turn queue, interrupts, empty requests, ends, messages after `end` and after a
stream error) gets only documented errors while other streams and RPCs go on;
a client that writes without reading is pushed back by HTTP/2 flow control
(the server holds at most ``INPUT_BUFFER`` of its requests); a client that never
reads pauses its own generation (at most ``GENERATION_BUFFER`` pieces of text
and ``OUTPUT_BUFFER`` responses held, the LLM request paused) and can still go
away cleanly; huge fields and messages over the receive limit; half-closed and
cancelled streams store exactly what was acknowledged; streams that never send
`start` are bounded by the idle limit and the concurrent-stream quota; and a
property test over random sequences of requests with hostile field values.

Covered elsewhere and not repeated: the first message must be `start` and a
second `start` ends the stream (tests/integration/test_chat.py:
test_first_message_must_be_start, test_second_start_is_refused), invalid starts
(test_invalid_starts_are_refused), text one over the limit and a 129-character
client_message_id (test_invalid_user_messages_fail_only_their_turn), closing the
request side right after `start` or at once
(test_closing_the_request_side_closes_the_stream), the turn queue's bound
(tests/integration/test_chat_pipeline.py: test_queued_turns_are_bounded), a
disconnect during a running turn
(test_a_disconnect_stops_the_llm_and_keeps_what_was_delivered), and the idle,
deadline and age limits of a started stream (test_deadline_idle_and_age_limits,
test_a_stream_past_its_maximum_age_drains).

Memory is measured, not timed: the sizes of the session's queues are sampled in
process while the abuse runs, and the fake LLM counts the tokens it could send.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fenlo.v1 import chat_pb2, chat_pb2_grpc, conversation_pb2, knowledge_pb2, knowledge_pb2_grpc
from fenlo.v1 import workspace_pb2 as W
from fenlo_server import metrics
from fenlo_server.api.chat import INPUT_BUFFER, OUTPUT_BUFFER, ChatSession
from fenlo_server.app import FenloApp
from fenlo_server.pipeline.engine import GENERATION_BUFFER
from tests.chat_helpers import READ_TIMEOUT, ChatStream
from tests.conftest import _sqlite_url, make_settings, start_app
from tests.fakes.openai_server import FakeLlmServer, Reply
from tests.helpers import Api, RichError, decode_status, rich_error

C = conversation_pb2
R = chat_pb2.ChatRequest
# A client that buffers little of what it is sent (no BDP probing: a 64 KiB window),
# so that a client that stops reading fills the server's side quickly.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]


CHAT = "/fenlo.v1.ChatService/Chat"

# -- helpers ----------------------------------------------------------------------------


def the_session(app: FenloApp) -> ChatSession:
    """The one open Chat session of ``app`` (measured in process)."""
    (session,) = app.chat_hub._sessions
    return session


async def stored(api: Api, token: str, conversation: str) -> list[C.Message]:
    page = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=conversation, page_size=1000), metadata=api.md(token)
    )
    return list(page.messages)


def of_role(messages: Iterable[C.Message], role: int) -> list[C.Message]:
    return [m for m in messages if m.role == role]


async def wait_until(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.02)


async def settle(
    value: Callable[[], int], what: str, quiet: float = 1.0, within: float = 30.0
) -> int:
    """Wait until ``value()`` has not changed for ``quiet`` seconds; return it."""
    deadline = time.monotonic() + within
    last, since = value(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"{what} kept changing for {within}s"
        await asyncio.sleep(0.05)
        if (now := value()) != last:
            last, since = now, time.monotonic()
    return last


class Peaks:
    """The largest value each probe took while the block ran, sampled every few ms."""

    def __init__(self, **probes: Callable[[], int]) -> None:
        self._probes = probes
        self.peak = dict.fromkeys(probes, 0)
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            for name, probe in self._probes.items():
                self.peak[name] = max(self.peak[name], probe())
            await asyncio.sleep(0.002)

    async def __aenter__(self) -> Peaks:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def write_all(call: Any, requests: Iterable[chat_pb2.ChatRequest]) -> int:
    """Write as fast as the call takes them; stop when the call has ended. Return how many."""
    written = 0
    try:
        for request in requests:
            await call.write(request)
            written += 1
    except (asyncio.InvalidStateError, aio.AioRpcError):
        pass  # the server ended the call: what a flood meets after `end` or an error
    return written


async def read_all(
    call: Any, responses: list[chat_pb2.ChatResponse] | None = None
) -> tuple[list[chat_pb2.ChatResponse], aio.AioRpcError | None]:
    """Every response until the call ends (appended to ``responses`` as they come),
    and the error it ended with (None: OK)."""
    responses = [] if responses is None else responses
    try:
        while (response := await asyncio.wait_for(call.read(), READ_TIMEOUT)) is not aio.EOF:
            responses.append(response)
    except aio.AioRpcError as error:
        return responses, error
    assert await call.code() == grpc.StatusCode.OK
    return responses, None


def chat_codes() -> Counter[str]:
    """How many Chat streams the servers of this process ended, by status code (their
    RPC metrics: the server's own view of how each stream ended)."""
    counts: Counter[str] = Counter()
    for metric in metrics.REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "fenlo_rpc_total" and sample.labels["method"] == CHAT:
                counts[sample.labels["code"]] += int(sample.value)
    return counts


async def ended_streams(before: Counter[str], count: int) -> Counter[str]:
    """The status codes of the ``count`` Chat streams the server ended since ``before``."""
    await wait_until(lambda: (chat_codes() - before).total() >= count, f"{count} streams to end")
    return chat_codes() - before


def raced(error: aio.AioRpcError) -> bool:
    """Whether this client could not see how the server ended the call: grpc-python
    marks its own call INTERNAL ("Internal error from Core") when a write is in flight
    as the server ends the call. The server's code is then known from its metrics
    (``ended_streams``)."""
    return (
        error.code() == grpc.StatusCode.INTERNAL and error.details() == "Internal error from Core"
    )


def sent_error(error: aio.AioRpcError) -> RichError | None:
    """The Fenlo error the server ended the call with (None: see ``raced``)."""
    return None if raced(error) else rich_error(error)


def kinds(responses: Iterable[chat_pb2.ChatResponse]) -> list[str]:
    return [str(r.WhichOneof("kind")) for r in responses]


def turn_errors(responses: Iterable[chat_pb2.ChatResponse]) -> list[RichError]:
    return [decode_status(r.error.status) for r in responses if r.WhichOneof("kind") == "error"]


def acknowledged(responses: Iterable[chat_pb2.ChatResponse]) -> list[str]:
    """The user messages the server said it stored (turn_started), first time each."""
    names: list[str] = []
    for response in responses:
        if response.WhichOneof("kind") == "turn_started":
            name = response.turn_started.user_message
            if name not in names:
                names.append(name)
    return names


def user(text: str, client_message_id: str = "") -> chat_pb2.ChatRequest:
    return R(user_message=chat_pb2.UserMessage(text=text, client_message_id=client_message_id))


async def healthy(api: Api) -> None:
    """The server answers health checks and runs a whole turn on a new stream."""
    health = health_pb2_grpc.HealthStub(api.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=READ_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    workspace, token = await api.create_workspace("Probe")
    probe = ChatStream(api, token)
    await probe.start(parent=f"workspaces/{workspace}")
    await probe.say("Are you still there?")
    await probe.turn()
    await probe.send(end=chat_pb2.EndChat())
    assert await probe.rest() == []


@contextlib.asynccontextmanager
async def llm_server_app(
    sqlite_template: Path, tmp_path: Path, llm: FakeLlmServer, **overrides: Any
) -> AsyncIterator[Api]:
    """A server on SQLite whose LLM (and, if asked, embedder) is ``llm``."""
    app = await start_app(
        make_settings(
            tmp_path,
            _sqlite_url(sqlite_template, tmp_path / "db"),
            openai_api_key="test",
            openai_base_url=llm.openai_url,
            llm_order="openai",
            llm_offline_fallback=False,
            **overrides,
        )
    )
    try:
        async with Api(app) as api:
            yield api
    finally:
        await app.stop(grace=0)


# -- floods ---------------------------------------------------------------------------


async def test_a_flood_of_every_kind_of_request_gets_only_documented_errors(api: Api) -> None:
    workspace, token = await api.create_workspace("Flood")
    bystander_workspace, bystander_token = await api.create_workspace("Bystander")
    flood = ChatStream(api, token)
    session = await flood.start(parent=f"workspaces/{workspace}")
    conversation = session.conversation.name
    count = 150  # user messages, far beyond chat_max_queued_turns
    before_end: list[chat_pb2.ChatRequest] = []
    for i in range(count):
        before_end += [
            user(f"flood {i}", f"flood-{i}"),
            R(interrupt=chat_pb2.Interrupt(turn_id=f"no-such-turn-{i}", delivered_code_points=-i)),
            R(),
        ]
    after_end = [R(end=chat_pb2.EndChat())] * 5
    for i in range(50):
        after_end += [
            user(f"after end {i}"),
            R(start=chat_pb2.StartChat(parent=f"workspaces/{workspace}")),
            R(interrupt=chat_pb2.Interrupt(turn_id="x" * 10_000, delivered_code_points=2**63 - 1)),
            R(),
        ]

    async def bystander() -> None:
        # Another workspace's stream on the same connection, and a unary RPC,
        # while the flood runs.
        chat = ChatStream(api, bystander_token)
        await chat.start(parent=f"workspaces/{bystander_workspace}")
        await chat.say("Hello")
        await chat.turn()
        got = await api.workspaces.GetWorkspace(
            W.GetWorkspaceRequest(name=f"workspaces/{workspace}"),
            metadata=api.md(token),
            timeout=READ_TIMEOUT,
        )
        assert got.name == f"workspaces/{workspace}"
        await chat.send(end=chat_pb2.EndChat())
        assert await chat.rest() == []

    before = chat_codes()
    written, (responses, failed), _ = await asyncio.gather(
        write_all(flood.call, [*before_end, *after_end]), read_all(flood.call), bystander()
    )
    assert written >= len(before_end) + 1  # at least up to the first `end`
    # Both streams ended with OK (what the flood's client saw, unless its own write
    # raced the end of the call).
    assert await ended_streams(before, 2) == Counter({"OK": 2})
    assert failed is None or raced(failed)

    errors = turn_errors(responses)
    reasons = [(e.code, e.reason) for e in errors]
    assert set(reasons) <= {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "TURN_QUEUE_FULL"),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    }, reasons
    completed = kinds(responses).count("turn_completed")
    # Every user message before `end` ran or was refused; every empty request was refused.
    assert (
        completed + reasons.count((grpc.StatusCode.RESOURCE_EXHAUSTED, "TURN_QUEUE_FULL")) == count
    )
    assert reasons.count((grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")) == count
    assert completed >= 1

    # Stored: exactly the acknowledged user messages, in order, and nothing after `end`.
    await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)
    messages = await stored(api, token, conversation)
    users = of_role(messages, C.MESSAGE_ROLE_USER)
    assert [m.name for m in users] == acknowledged(responses)
    numbers = [int(m.text.removeprefix("flood ")) for m in users]
    assert numbers == sorted(numbers) and len(numbers) == completed
    assert all(m.client_message_id == f"flood-{n}" for m, n in zip(users, numbers, strict=True))
    answers = {
        r.turn_completed.assistant_message for r in responses if r.HasField("turn_completed")
    }
    assert {m.name for m in of_role(messages, C.MESSAGE_ROLE_ASSISTANT)} == answers - {""}


@pytest.mark.parametrize("started", [False, True])
async def test_an_undecodable_request_ends_the_stream_with_invalid_argument(
    sqlite_api: Api, started: bool
) -> None:
    """Bytes that are no ChatRequest (a cut-off field) are a bad request, not the
    caller closing its side: the stream ends INVALID_ARGUMENT, nothing is lost
    silently."""
    api = sqlite_api
    workspace, token = await api.create_workspace("Undecodable")
    chat = api.channel.stream_stream(
        "/fenlo.v1.ChatService/Chat",
        request_serializer=None,  # the bytes go as they are
        response_deserializer=chat_pb2.ChatResponse.FromString,
    )
    call = chat(metadata=api.md(token), timeout=30)
    if started:
        start = chat_pb2.ChatRequest(start=chat_pb2.StartChat(parent=f"workspaces/{workspace}"))
        await call.write(start.SerializeToString())
        first = await call.read()
        assert first.WhichOneof("kind") == "session_started", first
    await call.write(b"\x0a\x64ab")  # field 1, 100 bytes long, cut off after two
    with contextlib.suppress(aio.AioRpcError):
        while await asyncio.wait_for(call.read(), READ_TIMEOUT) is not aio.EOF:
            pass
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT, await call.details()


@pytest.mark.parametrize("cause", ["not_started", "second_start", "oversized"])
async def test_requests_after_a_stream_error_change_nothing(api: Api, cause: str) -> None:
    workspace, token = await api.create_workspace("Broken")
    chat = ChatStream(api, token)
    conversation = ""
    if cause != "not_started":
        conversation = (await chat.start(parent=f"workspaces/{workspace}")).conversation.name
        await chat.say("the one turn")
        first = await chat.turn()
    breaking = {
        "not_started": user("hello before start"),
        "second_start": R(start=chat_pb2.StartChat(parent=f"workspaces/{workspace}")),
        # Just over the gRPC receive limit (FENLO_MAX_RECEIVE_MESSAGE_BYTES).
        "oversized": user("x" * api.app.settings.max_receive_message_bytes),
    }[cause]
    flood = [user(f"after the error {i}") for i in range(300)]
    flood += [
        R(end=chat_pb2.EndChat()),
        R(start=chat_pb2.StartChat(parent=f"workspaces/{workspace}")),
    ]
    before = chat_codes()
    writer = asyncio.create_task(write_all(chat.call, [breaking, *flood]))
    responses, failed = await read_all(chat.call)
    await writer
    assert responses == []
    assert failed is not None
    ended = await ended_streams(before, 1)
    if cause == "oversized":
        # Refused by gRPC itself, before any of our code sees the message: the
        # handler only sees its request stream fail, and gRPC ends the call.
        assert ended.keys() <= {"RESOURCE_EXHAUSTED", "CANCELLED"}, ended
        assert raced(failed) or failed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        code, reason = {
            "not_started": (grpc.StatusCode.FAILED_PRECONDITION, "CHAT_NOT_STARTED"),
            "second_start": (grpc.StatusCode.INVALID_ARGUMENT, "CHAT_ALREADY_STARTED"),
        }[cause]
        assert ended == Counter({code.name: 1})
        error = sent_error(failed)
        assert error is None or (error.code, error.reason, error.domain) == (
            code,
            reason,
            "fenlo.ai",
        )

    await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)
    assert api.app.chat_hub.open_sessions == 0
    listed = await api.conversations.ListConversations(
        C.ListConversationsRequest(parent=f"workspaces/{workspace}"), metadata=api.md(token)
    )
    assert [c.name for c in listed.conversations] == ([conversation] if conversation else [])
    if conversation:
        messages = await stored(api, token, conversation)
        assert [m.text for m in of_role(messages, C.MESSAGE_ROLE_USER)] == ["the one turn"]
        assert messages[0].name == first.started.user_message
        # The stream's hold on the conversation is gone: it can be resumed at once.
        again = ChatStream(api, token)
        assert (await again.start(conversation=conversation)).resumed
        await again.call.done_writing()
        assert await again.rest() == []
    await healthy(api)


async def test_a_client_that_writes_without_reading_is_pushed_back(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Writer")
    limit = api.app.settings.chat_max_queued_turns
    channel = aio.insecure_channel(api.target, options=SMALL_WINDOW)
    try:
        call: Any = chat_pb2_grpc.ChatServiceStub(channel).Chat(metadata=api.md(token))
        await call.write(R(start=chat_pb2.StartChat(parent=f"workspaces/{workspace}")))
        assert (await call.read()).WhichOneof("kind") == "session_started"
        session = the_session(api.app)
        total = 20_000
        written = 0

        async def writer() -> None:
            nonlocal written
            for i in range(total):  # 1 KiB each: 20 MB if nothing pushed back
                await call.write(user(f"{i:05d} " + "x" * 1000))
                written += 1

        async with Peaks(
            inbox=session._inbox.qsize, out=session._out.qsize, turns=session._turns.qsize
        ) as peaks:
            writing = asyncio.create_task(writer())
            stalled_at = await settle(lambda: written, "the flood of writes")
            assert not writing.done(), "every write went through: nothing pushed back"
            # The other RPCs of the server go on meanwhile.
            got = await api.workspaces.GetWorkspace(
                W.GetWorkspaceRequest(name=f"workspaces/{workspace}"),
                metadata=api.md(token),
                timeout=READ_TIMEOUT,
            )
            assert got.name == f"workspaces/{workspace}"
        # Many more requests than the server holds went through before the push-back...
        assert INPUT_BUFFER + OUTPUT_BUFFER < stalled_at < total
        # ...and at no time did the stream hold more than its bounds: INPUT_BUFFER
        # requests (plus the worker's notices of finished turns), OUTPUT_BUFFER
        # responses, and the queued turns.
        assert peaks.peak["inbox"] <= INPUT_BUFFER + limit + 1, peaks.peak
        assert peaks.peak["out"] <= OUTPUT_BUFFER, peaks.peak
        assert peaks.peak["turns"] <= limit, peaks.peak
        writing.cancel()
        call.cancel()
        await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)
    finally:
        await channel.close()
    await healthy(api)


async def test_a_client_that_never_reads_pauses_its_generation(
    sqlite_template: Path, tmp_path: Path
) -> None:
    tokens = [f"t{i:05d}{'x' * 2000} " for i in range(8000)]  # 16 MB if nothing pauses
    async with (
        FakeLlmServer(Reply(tokens=tokens)) as llm,
        llm_server_app(sqlite_template, tmp_path, llm) as api,
    ):
        workspace, token = await api.create_workspace("Sleeper")
        channel = aio.insecure_channel(api.target, options=SMALL_WINDOW)
        try:
            call: Any = chat_pb2_grpc.ChatServiceStub(channel).Chat(metadata=api.md(token))
            await call.write(R(start=chat_pb2.StartChat(parent=f"workspaces/{workspace}")))
            conversation = (await call.read()).session_started.conversation.name
            session = the_session(api.app)

            def generated() -> int:
                current = session._current
                return current[1]._queue.qsize() if current else 0

            async with Peaks(out=session._out.qsize, generated=generated) as peaks:
                await call.write(user("Tell me everything"))
                await wait_until(lambda: bool(llm.requests), "the LLM request")
                sent = await settle(lambda: llm.requests[-1].tokens_sent, "the LLM's tokens")
                other = await api.workspaces.GetWorkspace(
                    W.GetWorkspaceRequest(name=f"workspaces/{workspace}"),
                    metadata=api.md(token),
                    timeout=READ_TIMEOUT,
                )
                assert other.name == f"workspaces/{workspace}"
            # The LLM request is paused (its answer is not read on), and the stream
            # holds at most its bounds of text and responses.
            assert 0 < sent < len(tokens)
            assert llm.requests[-1].disconnected is None
            assert peaks.peak["generated"] <= GENERATION_BUFFER, peaks.peak
            assert peaks.peak["out"] <= OUTPUT_BUFFER, peaks.peak

            # Going away now stops the LLM request and stores what gRPC was handed,
            # marked interrupted, although the turn was waiting for room to send.
            call.cancel()
            await llm.wait_disconnect(llm.requests[-1], within=READ_TIMEOUT)
            await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)
            messages = await stored(api, token, conversation)
            assert [m.role for m in messages] == [C.MESSAGE_ROLE_USER, C.MESSAGE_ROLE_ASSISTANT]
            answer = messages[1]
            assert answer.interrupted
            assert "".join(tokens).startswith(answer.text)
            assert len(answer.text) < sent * len(tokens[0])
        finally:
            await channel.close()


# -- huge messages ---------------------------------------------------------------------


async def test_huge_fields_get_small_field_violations_and_the_stream_stays_usable(
    api: Api,
) -> None:
    workspace, token = await api.create_workspace("Huge")
    limit = api.app.settings.max_user_text_chars
    chat = ChatStream(api, token)
    conversation = (await chat.start(parent=f"workspaces/{workspace}")).conversation.name
    cases = [
        ("🙂" * (limit + 1), "", "user_message.text"),  # counted in code points, not bytes
        ("x" * (3 * 1024 * 1024), "", "user_message.text"),  # under the receive limit
        ("fine", "c" * 1_000_000, "user_message.client_message_id"),
    ]
    for text, client_message_id, field in cases:
        await chat.say(text, client_message_id)
        error = await chat.turn_error()
        assert error.turn_id == ""
        assert error.status.ByteSize() < 2000  # the value is not echoed back
        status = decode_status(error.status)
        assert (status.code, status.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert [f for f, _ in status.violations] == [field]
    await chat.say("🙂" * limit)  # exactly the limit, four bytes each
    await chat.turn()
    await chat.say("still here")
    await chat.turn()
    await chat.send(end=chat_pb2.EndChat())
    assert await chat.rest() == []
    users = of_role(await stored(api, token, conversation), C.MESSAGE_ROLE_USER)
    assert [m.text for m in users] == ["🙂" * limit, "still here"]

    parent = f"workspaces/{workspace}"
    starts: list[tuple[chat_pb2.StartChat, str, list[str]]] = [
        (
            chat_pb2.StartChat(parent=parent, metadata={"k": "v" * 1_000_000}),
            "INVALID_ARGUMENT",
            ["start.metadata['k']"],
        ),
        (
            chat_pb2.StartChat(parent=parent, metadata={"k" * 1_000_000: "v"}),
            "INVALID_ARGUMENT",
            [f"start.metadata[{'k' * 40!r}]"],
        ),
        (
            chat_pb2.StartChat(parent=parent, external_contact_id="c" * 1_000_000),
            "INVALID_ARGUMENT",
            ["start.external_contact_id"],
        ),
        (
            chat_pb2.StartChat(parent=parent + "a" * 1_000_000),
            "RESOURCE_NAME_INVALID",
            ["start.parent"],
        ),
        (
            chat_pb2.StartChat(conversation=conversation + "a" * 1_000_000),
            "RESOURCE_NAME_INVALID",
            ["start.conversation"],
        ),
    ]
    for start, reason, fields in starts:
        refused = ChatStream(api, token)
        await refused.send(start=start)
        error = await refused.failure(grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert sorted(f for f, _ in error.violations) == fields
        assert len(error.message) < 1000
        assert all(len(d) < 1000 for _, d in error.violations)
    listed = await api.conversations.ListConversations(
        C.ListConversationsRequest(parent=parent), metadata=api.md(token)
    )
    assert [c.name for c in listed.conversations] == [conversation]


# -- half-closed and cancelled streams -------------------------------------------------------


async def test_half_closing_mid_turn_finishes_the_queued_turns_and_stores_them(api: Api) -> None:
    workspace, token = await api.create_workspace("Half")
    accepted = api.app.settings.chat_max_queued_turns + 1  # the running turn and a full queue
    chat = ChatStream(api, token)
    conversation = (await chat.start(parent=f"workspaces/{workspace}")).conversation.name
    for i in range(accepted):
        await chat.say(f"question {i}", f"q-{i}")
    first = await chat.read_until("turn_started")
    await chat.call.done_writing()  # during the first turn, with the others queued
    responses = [first, *await chat.rest()]
    assert kinds(responses).count("turn_completed") == accepted
    assert turn_errors(responses) == []
    await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)
    messages = await stored(api, token, conversation)
    users = of_role(messages, C.MESSAGE_ROLE_USER)
    assert [m.name for m in users] == acknowledged(responses)
    assert [m.text for m in users] == [f"question {i}" for i in range(accepted)]
    assert len(of_role(messages, C.MESSAGE_ROLE_ASSISTANT)) == accepted


async def test_cancelling_mid_turn_drops_the_queued_turns(
    sqlite_template: Path, tmp_path: Path
) -> None:
    async with (
        FakeLlmServer(Reply(tokens=[f"word{i} " for i in range(300)], token_delay=0.02)) as llm,
        llm_server_app(sqlite_template, tmp_path, llm) as api,
    ):
        workspace, token = await api.create_workspace("Cancel")
        chat = ChatStream(api, token)
        conversation = (await chat.start(parent=f"workspaces/{workspace}")).conversation.name
        queued = api.app.settings.chat_max_queued_turns
        for i in range(queued + 1):
            await chat.say(f"question {i}")
        started = await chat.read_until("turn_started")
        await chat.read_until("delta")
        chat.call.cancel()
        await llm.wait_disconnect(llm.requests[-1], within=READ_TIMEOUT)
        await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)
        messages = await stored(api, token, conversation)
        # The running turn: its message and the part of the answer that was sent,
        # marked interrupted. The queued ones were never acknowledged: not stored,
        # never sent to the LLM.
        assert [m.role for m in messages] == [C.MESSAGE_ROLE_USER, C.MESSAGE_ROLE_ASSISTANT]
        assert messages[0].name == started.turn_started.user_message
        assert messages[0].text == "question 0"
        assert messages[1].interrupted and messages[1].text.startswith("word0 ")
        assert len([r for r in llm.requests if r.path.endswith("/chat/completions")]) == 1


@pytest.mark.parametrize("stopped_by", ["cancel", "deadline"])
async def test_a_turn_stopped_before_it_is_acknowledged_stores_and_generates_nothing(
    sqlite_template: Path, tmp_path: Path, stopped_by: str
) -> None:
    # The workspace's embeddings come from the fake server too, so that the turn's
    # retrieval (a pre step) is slow on cue: the caller's cancel, or the turn's
    # deadline, lands before the turn is acknowledged.
    deadline = 1.0
    async with (
        FakeLlmServer() as llm,
        llm_server_app(
            sqlite_template,
            tmp_path,
            llm,
            kb_embedders="openai",
            chat_turn_deadline_seconds=deadline if stopped_by == "deadline" else 60,
        ) as api,
    ):
        workspace, token = await api.create_workspace("Early")
        knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)
        document = await knowledge.ImportText(
            knowledge_pb2.ImportTextRequest(
                parent=f"workspaces/{workspace}",
                text="# Hours\n\nWe are open every day from nine to five.",
                document=knowledge_pb2.Document(title="Guide"),
            ),
            metadata=api.md(token),
        )
        for _ in range(int(30 / 0.05)):
            doc = await knowledge.GetDocument(
                knowledge_pb2.GetDocumentRequest(name=document.name), metadata=api.md(token)
            )
            if doc.status == knowledge_pb2.DOCUMENT_STATUS_READY:
                break
            await asyncio.sleep(0.05)
        assert doc.status == knowledge_pb2.DOCUMENT_STATUS_READY, doc
        chat = ChatStream(api, token)
        conversation = (await chat.start(parent=f"workspaces/{workspace}")).conversation.name
        seen = len(llm.requests)
        llm.script(Reply(first_delay=2.5 * deadline))  # the query's embedding is slow
        await chat.say("When are you open?")
        await wait_until(lambda: len(llm.requests) > seen, "the query's embedding request")
        assert llm.requests[-1].path == "/v1/embeddings"
        if stopped_by == "cancel":
            chat.call.cancel()
        else:
            error = await chat.turn_error()
            status = decode_status(error.status)
            assert (status.code, status.reason) == (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "TURN_DEADLINE_EXCEEDED",
            )
            assert error.turn_id == ""  # no turn started
            assert "before the message was stored" in status.message
            await chat.send(end=chat_pb2.EndChat())
            assert await chat.rest() == []
        await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)
        assert await stored(api, token, conversation) == []
        assert [r.path for r in llm.requests[seen:]] == ["/v1/embeddings"]  # no LLM call


# -- streams that never start ------------------------------------------------------------


async def test_streams_that_never_start_are_closed_by_the_idle_limit(
    sqlite_template: Path, tmp_path: Path
) -> None:
    slots = 6
    app = await start_app(
        make_settings(
            tmp_path,
            _sqlite_url(sqlite_template, tmp_path / "db"),
            chat_idle_timeout_seconds=0.5,
            default_concurrent_chat_streams=slots,
        )
    )
    try:
        async with Api(app) as api:
            workspace, token = await api.create_workspace("Silent")
            # Streams opened and dropped at once give their slots back at once.
            for _ in range(4):
                dropped = [ChatStream(api, token) for _ in range(slots)]
                await wait_until(lambda: app.chat_hub.open_sessions == slots, "open streams")
                for stream in dropped:
                    stream.call.cancel()
                await wait_until(lambda: app.chat_hub.open_sessions == 0, "dropped streams")
            # Streams opened and left open without `start` hold a slot each...
            silent = [ChatStream(api, token) for _ in range(slots)]
            await wait_until(lambda: app.chat_hub.open_sessions == slots, "silent streams")
            one_more = ChatStream(api, token)
            error = await one_more.failure(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "CONCURRENCY_LIMITED"
            )
            assert error.quota_violations == [
                (f"workspaces/{workspace}", "concurrent_chat_streams")
            ]
            # ...until the idle limit closes them, with OK.
            for stream in silent:
                assert await stream.rest() == []
            assert app.chat_hub.open_sessions == 0
            chat = ChatStream(api, token)
            await chat.start(parent=f"workspaces/{workspace}")
            await chat.say("Hello")
            await chat.turn()
            chat.call.cancel()
    finally:
        await app.stop(grace=0)


# -- random sequences --------------------------------------------------------------------

LIMIT = 8000  # FENLO_MAX_USER_TEXT_CHARS in the test server (checked in the test)
hostile_text = st.one_of(
    st.text(min_size=1, max_size=30),
    st.text(min_size=1, max_size=30),
    st.sampled_from(["", "   \n", "\x00", "a\x00b", "\u200b", "🙂" * 50, "x" * (LIMIT + 1)]),
    st.just("x" * LIMIT),
)
client_id = st.one_of(
    st.just(""), st.sampled_from(["same", "other"]), st.text(max_size=8), st.just("c" * 129)
)


def starts(targets: list[str], hostile: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    """`start` actions: target, channel, contact id, metadata, sentence events."""
    channel = st.integers(-3, 12) | st.just(2**31 - 1) if hostile else st.integers(0, 8)
    contact = st.text(max_size=12) | st.just("c" * 257) if hostile else st.text(max_size=12)
    key = st.text(max_size=6) if hostile else st.text(min_size=1, max_size=6)
    return st.tuples(
        st.just("start"),
        st.sampled_from(targets),
        channel,
        contact,
        st.dictionaries(key, st.text(max_size=6), max_size=3),
        st.booleans(),
    )


good_start = starts(["parent", "resume"], hostile=False)
any_start = starts(["parent", "resume", "theirs", "other_workspace", "garbage", "none"], True)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked with the given weights."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


user_action = st.tuples(st.just("user"), hostile_text, client_id)
interrupt_action = st.tuples(
    st.just("interrupt"),
    st.sampled_from(["latest", "unknown", ""]),
    st.integers(-(2**63), 2**63 - 1),
)
later_action = weighted(
    (10, user_action),
    (3, interrupt_action),
    (2, st.tuples(st.just("empty"))),
    (2, st.tuples(st.just("end"))),
    (1, any_start),
)
# Mostly a session that starts, then anything; sometimes a hostile or missing start.
sequences = st.tuples(
    weighted((6, good_start), (2, any_start), (2, later_action)),
    st.lists(later_action, max_size=10),
)
REFUSED_STARTS = {
    "theirs": (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED_WORKSPACE"),
    "other_workspace": (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED_WORKSPACE"),
    "garbage": (grpc.StatusCode.INVALID_ARGUMENT, "RESOURCE_NAME_INVALID"),
    "none": (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
}
TURN_ERRORS = {
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "TURN_QUEUE_FULL"),
}


@pytest.fixture
async def chat_world(sqlite_api: Api) -> dict[str, str]:
    workspace, token = await sqlite_api.create_workspace("Random")
    other, other_token = await sqlite_api.create_workspace("Theirs")
    theirs = await sqlite_api.create_conversation(other, other_token)
    return {"workspace": workspace, "token": token, "other": other, "theirs": theirs.name}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=sequences)
async def test_random_request_sequences_never_break_the_server(
    sqlite_api: Api, chat_world: dict[str, str], sequence: tuple[Any, list[Any]]
) -> None:
    api = sqlite_api
    assert api.app.settings.max_user_text_chars == LIMIT
    workspace, token = chat_world["workspace"], chat_world["token"]
    actions = [sequence[0], *sequence[1]]
    resumed = ""
    if actions[0][0] == "start" and actions[0][1] == "resume":
        resumed = (await api.create_conversation(workspace, token)).name
    call: Any = api.chat.Chat(metadata=api.md(token), timeout=60)
    responses: list[chat_pb2.ChatResponse] = []

    def request(action: tuple[Any, ...]) -> chat_pb2.ChatRequest:
        kind = action[0]
        if kind == "user":
            return user(action[1], action[2])
        if kind == "interrupt":
            turns = [r.turn_started.turn_id for r in responses if r.HasField("turn_started")]
            turn_id = {"latest": turns[-1] if turns else "", "unknown": "01unknown", "": ""}
            return R(
                interrupt=chat_pb2.Interrupt(
                    turn_id=turn_id[action[1]], delivered_code_points=action[2]
                )
            )
        if kind == "end":
            return R(end=chat_pb2.EndChat())
        if kind == "empty":
            return R()
        _, target, channel, contact, metadata, sentences = action
        fields: dict[str, Any] = {
            "parent": {"parent": f"workspaces/{workspace}"},
            "resume": {"conversation": resumed or f"workspaces/{workspace}/conversations/01x"},
            "theirs": {"conversation": chat_world["theirs"]},
            "other_workspace": {"parent": f"workspaces/{chat_world['other']}"},
            "garbage": {"parent": "workspaces/../" + contact},
            "none": {},
        }[target]
        return R(
            start=chat_pb2.StartChat(
                **fields,
                channel=channel,
                external_contact_id=contact,
                metadata=metadata,
                options=chat_pb2.ChatOptions(sentence_events=sentences),
            )
        )

    async def writer() -> None:
        try:
            for action in actions:
                await call.write(request(action))
            await call.done_writing()
        except (asyncio.InvalidStateError, aio.AioRpcError):
            pass

    before = chat_codes()
    _, (_, failed) = await asyncio.gather(writer(), read_all(call, responses))
    await asyncio.wait_for(api.app.chat_hub.wait_closed(), READ_TIMEOUT)

    ended = await ended_streams(before, 1)

    # The outcome the protocol promises for this sequence: OK or one documented
    # client error, never INTERNAL; and every turn error is one a client can act on.
    started = bool(responses) and responses[0].HasField("session_started")
    first, rest = actions[0], actions[1:]
    closing = next((i for i, a in enumerate(rest) if a[0] in ("start", "end")), len(rest))
    expected: tuple[grpc.StatusCode, str]
    if first[0] != "start":
        assert not started
        expected = (grpc.StatusCode.FAILED_PRECONDITION, "CHAT_NOT_STARTED")
    elif first[1] in REFUSED_STARTS:
        assert not started
        expected = REFUSED_STARTS[first[1]]
    elif not started:  # resuming always starts; `parent` with a bad channel, contact, metadata
        assert first[1] == "parent"
        expected = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    elif closing < len(rest) and rest[closing][0] == "start":
        expected = (grpc.StatusCode.INVALID_ARGUMENT, "CHAT_ALREADY_STARTED")
    else:
        expected = (grpc.StatusCode.OK, "")
    assert ended == Counter({expected[0].name: 1}), (ended, expected)
    event(f"ended: {expected[1] or 'OK'}")  # --hypothesis-show-statistics
    event(f"turns completed: {kinds(responses).count('turn_completed')}")
    print(
        "DEBUG", [a[:2] if a[0] != "user" else (a[0], a[1][:10]) for a in actions], kinds(responses)
    )
    if failed is None:
        assert expected[0] == grpc.StatusCode.OK
    elif not raced(failed):
        error = rich_error(failed)
        assert (error.code, error.reason, error.domain) == (*expected, "fenlo.ai")
    for error in turn_errors(responses):
        assert (error.code, error.reason) in TURN_ERRORS, error
    if not started:
        return
    handled = rest[:closing]

    # What is stored matches what the server acknowledged.
    conversation = responses[0].session_started.conversation.name
    users = of_role(await stored(api, token, conversation), C.MESSAGE_ROLE_USER)
    told = acknowledged(responses)
    sent = [a[1] for a in handled if a[0] == "user"]
    assert all(m.text in sent for m in users)
    if expected[0] == grpc.StatusCode.OK:
        assert [m.name for m in users] == told
        # Every user message and every empty request got its turn or its error.
        answered = kinds(responses).count("turn_completed") + len(turn_errors(responses))
        assert answered == len(sent) + sum(a[0] == "empty" for a in handled)
    else:
        # The stream failed: a turn cut short may have been stored just as it did.
        assert set(told) <= {m.name for m in users}
        assert len(users) - len(told) <= 1
