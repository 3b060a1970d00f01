"""Webhooks through the real server: the CRUD contract, secrets encrypted at rest,
signed deliveries to a real HTTP receiver on 127.0.0.1, deduplication, retries,
dead letters, the URL policy and resuming after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from sqlalchemy import text

from fenlo.v1 import webhook_pb2, webhook_pb2_grpc
from fenlo_server.app import FenloApp
from fenlo_server.events.bus import PublishedEvent
from fenlo_server.events.relay import published as as_published
from fenlo_server.ids import new_id
from fenlo_server.storage.models import OutboxEventRow
from fenlo_server.storage.webhooks import WebhookRepository
from tests.conftest import make_settings, start_app
from tests.helpers import Api, rich_error

ROOT = Path(__file__).resolve().parents[2]
H = webhook_pb2
FAST = {
    "webhook_allow_private": True,
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_seconds": 0.2,
    "webhook_max_attempts": 3,
    "webhook_poll_seconds": 0.05,
    "webhook_timeout_seconds": 2.0,
}
WAIT_SECONDS = 30.0


def documented_verify() -> Callable[..., bool]:
    """The verification snippet of docs/webhooks.md, executed as written."""
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    source = next(b for b in blocks if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/webhooks.md", "exec"), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    return verify


# ---------------------------------------------------------------- a real receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records requests and answers with the
    next status of ``statuses`` (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    set_cookie: str = ""  # a Set-Cookie header for every answer, if given

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, *statuses: int) -> None:
        with self.lock:
            self.statuses = list(statuses)

    def record(self, received: Received) -> int:
        with self.lock:
            self.requests.append(received)
            return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def got(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            status = state.record(
                Received(self.path, dict(self.headers.items()), body, time.monotonic())
            )
            payload = b"nope" if status >= 300 else b"ok"
            self.send_response(status)
            if state.set_cookie:
                self.send_header("Set-Cookie", state.set_cookie)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- helpers


def stub(api: Api) -> webhook_pb2_grpc.WebhookServiceStub:
    return webhook_pb2_grpc.WebhookServiceStub(api.channel)


async def fast_app(tmp_path: Path, database_url: str, **overrides: Any) -> FenloApp:
    # One JWT secret per test, so that tokens outlive a restart within the test.
    jwt_secret = "test-secret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()
    values = {**FAST, "jwt_secret": jwt_secret, **overrides}
    return await start_app(make_settings(tmp_path, database_url, **values))


@pytest.fixture
async def hook_app(database_url: str, tmp_path: Path) -> AsyncIterator[FenloApp]:
    server = await fast_app(tmp_path, database_url)
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def hook_api(hook_app: FenloApp) -> AsyncIterator[Api]:
    async with Api(hook_app) as helper:
        yield helper


async def create_hook(
    api: Api, workspace_id: str, token: str, url: str, **fields: Any
) -> H.CreateWebhookResponse:
    return await stub(api).CreateWebhook(
        H.CreateWebhookRequest(
            parent=f"workspaces/{workspace_id}", webhook=H.Webhook(url=url, **fields)
        ),
        metadata=api.md(token),
    )


async def event(
    app: FenloApp, workspace_id: str, kind: str = "turn.completed", seq: int = 1
) -> PublishedEvent:
    """An event stored in the outbox (deliveries are made only for stored events),
    marked published so that the relay leaves it to the test to publish."""
    now = datetime.now(UTC)
    row = OutboxEventRow(
        id=new_id(),
        workspace_id=workspace_id,
        seq=seq,
        type=kind,
        payload={"conversation": f"workspaces/{workspace_id}/conversations/c1", "n": seq},
        create_time=now,
        published_time=now,
    )
    async with app.db.workspace(workspace_id) as session:
        session.add(row)
    return as_published(row)


async def deliveries(api: Api, token: str, hook: str) -> list[H.Delivery]:
    response = await stub(api).ListDeliveries(
        H.ListDeliveriesRequest(parent=hook, page_size=1000), metadata=api.md(token)
    )
    return list(response.deliveries)


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_final(api: Api, token: str, hook: str, count: int = 1) -> list[H.Delivery]:
    """Wait until ``count`` deliveries of ``hook`` are no longer PENDING."""
    found: list[H.Delivery] = []

    async def done() -> bool:
        nonlocal found
        found = await deliveries(api, token, hook)
        return len(found) >= count and all(d.state != H.DELIVERY_STATE_PENDING for d in found)

    await wait_for(done, f"{count} final deliveries of {hook}")
    return found


async def expect_invalid(call: Awaitable[Any]) -> list[tuple[str, str]]:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    return error.violations


# ---------------------------------------------------------------- the contract


async def test_crud_paging_mask_and_validation(hook_api: Api, receiver: Receiver) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Hooks")
    md = api.md(admin)
    created = await create_hook(
        api, ws, admin, receiver.url, event_types=["turn.completed", "turn.completed"]
    )
    assert created.secret.startswith("whsec_") and len(created.secret) > 30
    hook = created.webhook
    assert hook.name.startswith(f"workspaces/{ws}/webhooks/")
    assert hook.enabled and list(hook.event_types) == ["turn.completed"]
    assert hook.secret == ""
    got = await stub(api).GetWebhook(H.GetWebhookRequest(name=hook.name), metadata=md)
    assert got == hook and got.secret == ""

    # Paging, newest first, secrets never listed.
    others = [
        (await create_hook(api, ws, admin, receiver.url, description=f"n{i}")).webhook
        for i in range(2)
    ]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub(api).ListWebhooks(
            H.ListWebhooksRequest(parent=f"workspaces/{ws}", page_size=2, page_token=token),
            metadata=md,
        )
        pages += 1
        assert all(w.secret == "" for w in page.webhooks)
        assert created.secret not in page.SerializeToString().decode("latin-1")
        seen += [w.name for w in page.webhooks]
        token = page.next_page_token
        if not token:
            break
    assert pages == 2
    assert seen == [others[1].name, others[0].name, hook.name]

    # Update with a mask changes only the masked fields.
    updated = await stub(api).UpdateWebhook(
        H.UpdateWebhookRequest(
            webhook=H.Webhook(
                name=hook.name, description="new note", enabled=False, url="http://ignored/"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description", "enabled"]),
        ),
        metadata=md,
    )
    assert updated.description == "new note" and not updated.enabled
    assert updated.url == receiver.url and list(updated.event_types) == ["turn.completed"]
    cleared = await stub(api).UpdateWebhook(
        H.UpdateWebhookRequest(
            webhook=H.Webhook(name=hook.name),
            update_mask=field_mask_pb2.FieldMask(paths=["event_types"]),
        ),
        metadata=md,
    )
    assert list(cleared.event_types) == []

    # Validation: every bad field reported, with its path.
    violations = await expect_invalid(
        stub(api).CreateWebhook(
            H.CreateWebhookRequest(
                parent=f"workspaces/{ws}",
                webhook=H.Webhook(
                    url="ftp://127.0.0.1/x",
                    event_types=["turn.completed", "no.such.type"],
                    secret="short",
                    description="x" * 501,
                ),
            ),
            metadata=md,
        )
    )
    assert {v[0] for v in violations} == {
        "webhook.url",
        "webhook.event_types[1]",
        "webhook.secret",
        "webhook.description",
    }
    for bad in ("", "not a url", "http://user:pw@127.0.0.1/", "https:///nohost"):
        violations = await expect_invalid(create_hook(api, ws, admin, bad))
        assert [v[0] for v in violations] == ["webhook.url"], bad
    violations = await expect_invalid(
        stub(api).UpdateWebhook(
            H.UpdateWebhookRequest(
                webhook=H.Webhook(name=hook.name),
                update_mask=field_mask_pb2.FieldMask(paths=["secret"]),
            ),
            metadata=md,
        )
    )
    assert violations[0][0] == "webhook.secret"
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(api).UpdateWebhook(
            H.UpdateWebhookRequest(
                webhook=H.Webhook(name=hook.name),
                update_mask=field_mask_pb2.FieldMask(paths=["create_time"]),
            ),
            metadata=md,
        )
    assert rich_error(caught.value).reason == "UPDATE_MASK_INVALID"
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(api).GetWebhook(
            H.GetWebhookRequest(name=f"workspaces/{ws}/deliveries/x"), metadata=md
        )
    assert rich_error(caught.value).reason == "RESOURCE_NAME_INVALID"

    # request_id: a retry returns the same webhook and secret.
    request_id = str(uuid.uuid4())
    request = H.CreateWebhookRequest(
        parent=f"workspaces/{ws}", webhook=H.Webhook(url=receiver.url), request_id=request_id
    )
    first = await stub(api).CreateWebhook(request, metadata=md)
    again = await stub(api).CreateWebhook(request, metadata=md)
    assert (again.webhook.name, again.secret) == (first.webhook.name, first.secret)

    # Delete; then it is gone.
    await stub(api).DeleteWebhook(H.DeleteWebhookRequest(name=hook.name), metadata=md)
    for call in (
        stub(api).GetWebhook(H.GetWebhookRequest(name=hook.name), metadata=md),
        stub(api).DeleteWebhook(H.DeleteWebhookRequest(name=hook.name), metadata=md),
        stub(api).ListDeliveries(H.ListDeliveriesRequest(parent=hook.name), metadata=md),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # Only admins.
    agent = api.token(ws, "agent")
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(api).ListWebhooks(
            H.ListWebhooksRequest(parent=f"workspaces/{ws}"), metadata=api.md(agent)
        )
    assert rich_error(caught.value).reason == "PERMISSION_DENIED_ROLE"


async def test_secrets_are_stored_encrypted(hook_api: Api, receiver: Receiver) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Secrets")
    chosen = "my-own-secret-" + uuid.uuid4().hex
    generated = await create_hook(api, ws, admin, receiver.url)
    mine = await create_hook(api, ws, admin, receiver.url, secret=chosen)
    assert mine.secret == chosen
    rotated = "rotated-secret-" + uuid.uuid4().hex
    await stub(api).UpdateWebhook(
        H.UpdateWebhookRequest(
            webhook=H.Webhook(name=generated.webhook.name, secret=rotated),
            update_mask=field_mask_pb2.FieldMask(paths=["secret"]),
        ),
        metadata=api.md(admin),
    )
    async with api.app.db.engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT * FROM webhooks WHERE workspace_id = :ws"), {"ws": ws}
            )
        ).all()
    assert len(rows) == 2
    raw = json.dumps([[str(v) for v in row] for row in rows])
    for secret in (generated.secret, chosen, rotated):
        assert secret not in raw
    for row in rows:
        assert row.secret_ciphertext.startswith("v1:")
    # The rotated secret signs from now on: deliver one event and check.
    await api.app.bus.publish(await event(api.app, ws))
    verify = documented_verify()
    await wait_for(lambda: _true(len(receiver.got()) >= 2), "two requests")
    by_hook = {r.headers["Fenlo-Webhook-Id"]: r for r in receiver.got()}
    generated_id = generated.webhook.name.rsplit("/", 1)[1]
    mine_id = mine.webhook.name.rsplit("/", 1)[1]
    first = by_hook[generated_id]
    assert verify(rotated, first.headers, first.body)
    assert not verify(generated.secret, first.headers, first.body)
    assert verify(chosen, by_hook[mine_id].headers, by_hook[mine_id].body)


async def _true(value: bool) -> bool:
    return value


# ---------------------------------------------------------------- delivery


async def test_event_reaches_the_receiver_signed(
    hook_api: Api, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Delivery")
    created = await create_hook(api, ws, admin, receiver.url)
    # Not delivered: another type, a disabled webhook, another workspace's webhook.
    await create_hook(api, ws, admin, receiver.url, event_types=["lead.qualified"])
    await create_hook(api, ws, admin, receiver.url, enabled=False)
    other_ws, other_admin = await api.create_workspace("Other")
    await create_hook(api, other_ws, other_admin, receiver.url)

    published = await event(api.app, ws, seq=7)
    caplog.set_level("INFO", logger="fenlo.webhooks")
    assert await api.app.bus.publish(published)
    [delivery] = await wait_final(api, admin, created.webhook.name)
    assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
    assert (delivery.event_id, delivery.event_seq, delivery.event_type) == (
        published.id,
        7,
        "turn.completed",
    )
    assert delivery.attempt_count == 1 and delivery.last_status_code == 200
    assert [(a.attempt_number, a.status_code, a.error) for a in delivery.attempts] == [(1, 200, "")]
    assert not delivery.HasField("next_attempt_time")

    [request] = receiver.got()
    assert request.path == "/hook"
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["Fenlo-Event-Id"] == published.id
    assert headers["Fenlo-Webhook-Id"] == created.webhook.name.rsplit("/", 1)[1]
    assert abs(int(headers["Fenlo-Timestamp"]) - time.time()) < 120
    assert re.fullmatch(r"v1=[0-9a-f]{64}", headers["Fenlo-Signature"])
    body = json.loads(request.body)
    assert body == {
        "id": published.id,
        "seq": 7,
        "type": "turn.completed",
        "workspace": f"workspaces/{ws}",
        "create_time": body["create_time"],
        "payload": published.payload,
    }
    assert body["create_time"].endswith("Z")

    verify = documented_verify()
    assert verify(created.secret, headers, request.body)
    assert not verify(created.secret, headers, request.body + b" ")
    assert not verify("whsec_wrong", headers, request.body)
    # A replay outside the tolerance is refused.
    assert not verify(created.secret, headers, request.body, now=time.time() + 3600)

    attempts = [r for r in caplog.records if r.getMessage() == "webhook delivery attempt"]
    assert len(attempts) == 1
    assert attempts[0].__dict__["event_id"] == published.id
    assert attempts[0].__dict__["status_code"] == 200
    logged = "\n".join(str(r.__dict__) for r in caplog.records)
    assert created.secret not in logged


async def test_an_event_published_twice_is_delivered_once(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    app = await fast_app(tmp_path, database_url)
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Dedup")
            created = await create_hook(api, ws, admin, receiver.url)
            twice = await event(app, ws, seq=1)
            assert await app.bus.publish(twice)
            assert not await app.bus.publish(twice)  # the bus drops it
            await wait_final(api, admin, created.webhook.name)
            # As if another replica (or the relay after a restart) handed it over again.
            await app.webhooks.record(twice)
    finally:
        await app.stop(grace=0)
    # A new server on the same database: its bus has never seen the event.
    again = await fast_app(tmp_path, database_url)
    try:
        async with Api(again) as api:
            assert await again.bus.publish(twice)
            barrier = await event(again, ws, seq=2)
            await again.bus.publish(barrier)
            found = await wait_final(api, admin, created.webhook.name, count=2)
    finally:
        await again.stop(grace=0)
    assert sorted(d.event_id for d in found) == sorted([twice.id, barrier.id])
    ids = [r.headers["Fenlo-Event-Id"] for r in receiver.got()]
    assert ids.count(twice.id) == 1 and ids.count(barrier.id) == 1


async def test_an_event_whose_recording_failed_is_caught_up_from_the_outbox(
    database_url: str, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus hands an event over once; if recording its deliveries fails then
    (here: the database refuses), the catch-up finds the event in the outbox."""
    app = await fast_app(tmp_path, database_url, webhook_catchup_seconds=0.2)
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Catch-up")
            created = await create_hook(
                api, ws, admin, receiver.url, event_types=["agent_message.posted"]
            )
            failed: list[str] = []

            async def database_away(published: PublishedEvent) -> None:
                failed.append(published.id)
                raise ConnectionError("the database went away")

            monkeypatch.setattr(app.webhooks, "record", database_away)
            conversation = await api.create_conversation(ws, admin)
            await post_agent_message(api, admin, conversation.name)
            await wait_for(lambda: _true(bool(failed)), "the failed recording")
            assert await deliveries(api, admin, created.webhook.name) == []
            # Nothing else: the catch-up loop (every 0.2 s, events older than 2 s).
            [delivery] = await wait_final(api, admin, created.webhook.name)
            assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
            assert delivery.event_id == failed[0]
            assert await app.webhooks.catch_up(settle=0) == 0  # once, not again
            await asyncio.sleep(0.5)
            assert len(await deliveries(api, admin, created.webhook.name)) == 1
    finally:
        await app.stop(grace=0)
    [got] = receiver.got()
    assert got.headers["Fenlo-Event-Id"] == failed[0]
    body = json.loads(got.body)
    assert body["type"] == "agent_message.posted"
    assert body["payload"]["conversation"] == conversation.name
    assert documented_verify()(created.secret, got.headers, got.body)


async def _true(value: bool) -> bool:
    return value


async def post_agent_message(api: Api, token: str, conversation: str) -> Any:
    from fenlo.v1 import conversation_pb2

    return await api.conversations.PostAgentMessage(
        conversation_pb2.PostAgentMessageRequest(parent=conversation, text="Ana here."),
        metadata=api.md(token),
    )


async def test_a_webhook_gets_the_events_after_its_creation_and_not_while_off(
    hook_app: FenloApp, hook_api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Cursor")
    conversation = await api.create_conversation(ws, admin)
    await post_agent_message(api, admin, conversation.name)  # before the webhook
    created = await create_hook(api, ws, admin, receiver.url, event_types=["agent_message.posted"])
    name = created.webhook.name
    off = field_mask_pb2.FieldMask(paths=["enabled"])
    await stub(api).UpdateWebhook(
        H.UpdateWebhookRequest(webhook=H.Webhook(name=name, enabled=False), update_mask=off),
        metadata=api.md(admin),
    )
    await post_agent_message(api, admin, conversation.name)  # while it is off
    await stub(api).UpdateWebhook(
        H.UpdateWebhookRequest(webhook=H.Webhook(name=name, enabled=True), update_mask=off),
        metadata=api.md(admin),
    )
    assert await hook_app.webhooks.catch_up(settle=0) == 0

    # Only the catch-up records from here on.
    async def ignore(published: PublishedEvent) -> None:
        return None

    monkeypatch.setattr(hook_app.webhooks, "record", ignore)
    after = await post_agent_message(api, admin, conversation.name)
    assert await hook_app.webhooks.catch_up(settle=0) == 1
    [delivery] = await wait_final(api, admin, name)
    assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
    [got] = receiver.got()
    assert json.loads(got.body)["payload"]["message"] == after.name


async def test_retried_until_the_receiver_succeeds(hook_api: Api, receiver: Receiver) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Retries")
    created = await create_hook(api, ws, admin, receiver.url)
    receiver.answer(500, 500, 200)
    await api.app.bus.publish(await event(api.app, ws))
    [delivery] = await wait_final(api, admin, created.webhook.name)
    assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
    assert [(a.attempt_number, a.status_code) for a in delivery.attempts] == [
        (1, 500),
        (2, 500),
        (3, 200),
    ]
    assert delivery.attempts[0].error.startswith("HTTP 500")
    assert delivery.last_error == "" and delivery.attempt_count == 3
    starts = [a.start_time.ToDatetime() for a in delivery.attempts]
    assert starts == sorted(starts)
    requests = receiver.got()
    assert len(requests) == 3
    assert len({r.body for r in requests}) == 1  # every retry sends the same body
    verify = documented_verify()
    assert all(verify(created.secret, r.headers, r.body) for r in requests)


async def test_dead_lettered_after_the_limit(hook_api: Api, receiver: Receiver) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Dead letters")
    created = await create_hook(api, ws, admin, receiver.url)
    receiver.answer(503)
    await api.app.bus.publish(await event(api.app, ws))
    [delivery] = await wait_final(api, admin, created.webhook.name)
    assert delivery.state == H.DELIVERY_STATE_DEAD_LETTER
    assert [(a.attempt_number, a.status_code) for a in delivery.attempts] == [
        (1, 503),
        (2, 503),
        (3, 503),
    ]
    assert all(a.error.startswith("HTTP 503") for a in delivery.attempts)
    assert delivery.last_status_code == 503 and not delivery.HasField("next_attempt_time")
    assert len(receiver.got()) == 3
    dead = await stub(api).ListDeliveries(
        H.ListDeliveriesRequest(parent=created.webhook.name, state=H.DELIVERY_STATE_DEAD_LETTER),
        metadata=api.md(admin),
    )
    assert [d.name for d in dead.deliveries] == [delivery.name]
    succeeded = await stub(api).ListDeliveries(
        H.ListDeliveriesRequest(parent=created.webhook.name, state=H.DELIVERY_STATE_SUCCEEDED),
        metadata=api.md(admin),
    )
    assert list(succeeded.deliveries) == []


async def test_unreachable_receiver_and_gone(hook_api: Api, receiver: Receiver) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Gone")
    # A port nobody listens on: connection refused, retried, dead-lettered.
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    nobody = await create_hook(api, ws, admin, f"http://127.0.0.1:{port}/")
    gone = await create_hook(api, ws, admin, receiver.url)
    receiver.answer(410)
    await api.app.bus.publish(await event(api.app, ws))
    [refused] = await wait_final(api, admin, nobody.webhook.name)
    assert refused.state == H.DELIVERY_STATE_DEAD_LETTER
    assert all(a.status_code == 0 and a.error for a in refused.attempts)
    assert len(refused.attempts) == 3
    [ended] = await wait_final(api, admin, gone.webhook.name)
    assert ended.state == H.DELIVERY_STATE_FAILED and len(ended.attempts) == 1
    hook = await stub(api).GetWebhook(
        H.GetWebhookRequest(name=gone.webhook.name), metadata=api.md(admin)
    )
    assert not hook.enabled and "410" in hook.disabled_reason
    enabled = await stub(api).UpdateWebhook(
        H.UpdateWebhookRequest(
            webhook=H.Webhook(name=gone.webhook.name, enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
        metadata=api.md(admin),
    )
    assert enabled.enabled and enabled.disabled_reason == ""


async def test_deliveries_page(hook_api: Api, receiver: Receiver) -> None:
    api = hook_api
    ws, admin = await api.create_workspace("Pages")
    created = await create_hook(api, ws, admin, receiver.url)
    for seq in range(1, 4):
        await api.app.bus.publish(await event(api.app, ws, seq=seq))
    await wait_final(api, admin, created.webhook.name, count=3)
    names: list[str] = []
    token = ""
    for _ in range(5):
        page = await stub(api).ListDeliveries(
            H.ListDeliveriesRequest(parent=created.webhook.name, page_size=2, page_token=token),
            metadata=api.md(admin),
        )
        names += [d.name for d in page.deliveries]
        seqs = [d.event_seq for d in page.deliveries]
        assert seqs == sorted(seqs, reverse=True)
        token = page.next_page_token
        if not token:
            break
    assert len(names) == len(set(names)) == 3
    assert all(n.startswith(created.webhook.name + "/deliveries/") for n in names)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(api).ListDeliveries(
            H.ListDeliveriesRequest(
                parent=created.webhook.name, page_size=2, page_token=token or "bogus"
            ),
            metadata=api.md(admin),
        )
    assert rich_error(caught.value).reason == "PAGE_TOKEN_INVALID"


# ---------------------------------------------------------------- the URL policy


PRIVATE_URLS = [
    "http://127.0.0.1:9/hook",
    "http://localhost/hook",
    "https://10.1.2.3/hook",
    "http://192.168.0.10/",
    "http://172.16.5.5/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://100.64.0.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
]


async def test_private_addresses_are_refused_by_default(api: Api) -> None:
    ws, admin = await api.create_workspace("Policy")
    for url in PRIVATE_URLS:
        violations = await expect_invalid(create_hook(api, ws, admin, url))
        assert [v[0] for v in violations] == ["webhook.url"], url
        assert "address" in violations[0][1] or "resolve" in violations[0][1], violations
    public = await create_hook(api, ws, admin, "https://1.1.1.1/fenlo-hook", enabled=False)
    violations = await expect_invalid(
        stub(api).UpdateWebhook(
            H.UpdateWebhookRequest(
                webhook=H.Webhook(name=public.webhook.name, url="http://127.0.0.1/"),
                update_mask=field_mask_pb2.FieldMask(paths=["url"]),
            ),
            metadata=api.md(admin),
        )
    )
    assert [v[0] for v in violations] == ["webhook.url"]


async def test_send_time_check_refuses_a_url_that_became_private(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """A webhook accepted while private addresses were allowed is not called once
    they are not: the check runs again before every attempt."""
    app = await fast_app(tmp_path, database_url)
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Rebinding")
            created = await create_hook(api, ws, admin, receiver.url)
    finally:
        await app.stop(grace=0)
    strict = await fast_app(tmp_path, database_url, webhook_allow_private=False)
    try:
        async with Api(strict) as api:
            await strict.bus.publish(await event(strict, ws))
            [delivery] = await wait_final(api, admin, created.webhook.name)
    finally:
        await strict.stop(grace=0)
    assert delivery.state == H.DELIVERY_STATE_FAILED
    assert "loopback" in delivery.last_error and delivery.attempt_count == 1
    assert receiver.got() == []


async def test_a_changed_key_fails_the_delivery_instead_of_retrying_forever(
    sqlite_template: Path, tmp_path: Path, receiver: Receiver
) -> None:
    from tests.conftest import _sqlite_url

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await fast_app(tmp_path, url)
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Key change")
            created = await create_hook(api, ws, admin, receiver.url)
    finally:
        await app.stop(grace=0)
    other_key = await fast_app(tmp_path, url, webhook_secret_key="another-key-" + "x" * 20)
    try:
        async with Api(other_key) as api:
            await other_key.bus.publish(await event(other_key, ws))
            [delivery] = await wait_final(api, admin, created.webhook.name)
    finally:
        await other_key.stop(grace=0)
    assert delivery.state == H.DELIVERY_STATE_FAILED and delivery.attempt_count == 1
    assert "cannot be decrypted" in delivery.last_error
    assert receiver.got() == []


# ---------------------------------------------------------------- restart


async def test_pending_deliveries_resume_after_a_restart(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    slow = {"webhook_retry_base_seconds": 0.5, "webhook_retry_max_seconds": 0.5}
    app = await fast_app(tmp_path, database_url, webhook_max_attempts=50, **slow)
    receiver.answer(500)
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Restart")
            created = await create_hook(api, ws, admin, receiver.url)
            await app.bus.publish(await event(app, ws))

            found: list[H.Delivery] = []

            async def attempted() -> bool:
                nonlocal found
                found = await deliveries(api, admin, created.webhook.name)
                return bool(found) and found[0].attempt_count >= 1

            await wait_for(attempted, "a first failed attempt")
    finally:
        await app.stop(grace=0)
    [pending] = found
    assert pending.state == H.DELIVERY_STATE_PENDING
    tried = pending.attempt_count
    receiver.answer(200)
    again = await fast_app(tmp_path, database_url, webhook_max_attempts=50, **slow)
    try:
        async with Api(again) as api:
            [delivery] = await wait_final(api, admin, created.webhook.name)
    finally:
        await again.stop(grace=0)
    assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
    assert delivery.attempt_count > tried and delivery.attempts[-1].status_code == 200
    last = receiver.got()[-1]
    # The new server decrypted the secret with the key kept in the data directory.
    assert documented_verify()(created.secret, last.headers, last.body)


# ---------------------------------------------------------------- ARQ


async def test_arq_workers_deliver_when_redis_is_configured(
    redis_url: str, sqlite_template: Path, tmp_path: Path, receiver: Receiver
) -> None:
    from arq.worker import Worker

    from fenlo_server.jobs.arq_worker import worker_settings
    from tests.conftest import _sqlite_url

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    queue = f"fenlo:test:webhooks:{uuid.uuid4().hex}"
    settings = make_settings(
        tmp_path, url, redis_url=redis_url, jobs_queue=queue, kb_embedders="minilm", **FAST
    )
    app = await start_app(settings)
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Arq hooks")
            created = await create_hook(api, ws, admin, receiver.url)
            receiver.answer(500, 200)
            await app.bus.publish(await event(app, ws))
            await asyncio.sleep(0.3)
            [pending] = await deliveries(api, admin, created.webhook.name)
            assert pending.state == H.DELIVERY_STATE_PENDING  # the server did not send it
            assert receiver.got() == []
            options = worker_settings(settings)
            options.update(burst=True, poll_delay=0.05, handle_signals=False)
            worker = Worker(**options)
            try:
                await asyncio.wait_for(worker.async_run(), 60)
            finally:
                await worker.close()
            [delivery] = await deliveries(api, admin, created.webhook.name)
    finally:
        await app.stop(grace=0)
    # The worker made the first attempt and its queued retry.
    assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
    assert [a.status_code for a in delivery.attempts] == [500, 200]
    verify = documented_verify()
    assert all(verify(created.secret, r.headers, r.body) for r in receiver.got())


async def test_redis_refusing_a_delivery_sends_it_from_the_server(
    sqlite_template: Path, tmp_path: Path, receiver: Receiver
) -> None:
    from tests.conftest import _sqlite_url

    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await fast_app(tmp_path, url, redis_url="redis://127.0.0.1:1/0", kb_embedders="minilm")
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("No Redis")
            created = await create_hook(api, ws, admin, receiver.url)
            await app.bus.publish(await event(app, ws))
            [delivery] = await wait_final(api, admin, created.webhook.name)
    finally:
        await app.stop(grace=0)
    assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
    assert len(receiver.got()) == 1


async def test_a_workspace_without_webhooks_costs_its_events_no_lookup_until_one_is_made(
    tmp_path: Path, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No catch-up pass in this test: the recorder alone must see the new webhook.
    app = await fast_app(tmp_path, database_url, webhook_catchup_seconds=3600)
    try:
        async with Api(app) as api:
            lookups: list[str] = []
            real = WebhookRepository.enabled

            async def counted(repo: WebhookRepository) -> list[Any]:
                lookups.append(repo.workspace_id)
                return await real(repo)

            monkeypatch.setattr(WebhookRepository, "enabled", counted)
            ws, admin = await api.create_workspace("Quiet")
            conversation = await api.create_conversation(ws, admin)
            for _ in range(3):
                await post_agent_message(api, admin, conversation.name)
            await wait_for(lambda: _true(app.webhooks._inbox.empty()), "the recorder")
            await asyncio.sleep(0.1)
            assert lookups == [ws], "only the first event looks the webhooks up"

            created = await create_hook(api, ws, admin, receiver.url)
            after = await post_agent_message(api, admin, conversation.name)
            [delivery] = await wait_final(api, admin, created.webhook.name)
            assert delivery.state == H.DELIVERY_STATE_SUCCEEDED
            [got] = receiver.got()
            assert json.loads(got.body)["payload"]["message"] == after.name
    finally:
        await app.stop(grace=0)
