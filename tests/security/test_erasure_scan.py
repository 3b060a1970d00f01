"""Erasure leaves nothing in any store.

After ``EraseContact`` (the contact's markers) and after ``DeleteWorkspace`` (the
workspace's markers), every store the server writes to is scanned for the
erased marker strings (``tests/lifecycle_helpers.py``, ``scan_all_stores``):
every row of every table of every workspace, the SQLite files' raw bytes,
every file of the data directory, every key of the server's Redis database
(names and values of every type), the fake Pinecone's records, the server's
in-process memory, what StreamEvents replays from the beginning, and the
webhook requests sent after the erasure. Each scan first has to find the
markers before the erasure, in every store it claims to scan; other contacts
and workspaces keep exactly their data.

Runs on SQLite and on PostgreSQL (FENLO_TEST_DATABASE_URL); with
FENLO_TEST_REDIS_URL the server uses Redis (database 11 of that server, which
no other test uses, so that the scan of every key reads this test's keys; the
markers are unique, so nobody else's keys could be mistaken for them) and ARQ
workers (run here, in-process, with the session's embedders).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from google.protobuf import field_mask_pb2

from fenlo.v1 import conversation_pb2 as C
from fenlo.v1 import knowledge_pb2 as K
from fenlo.v1 import knowledge_pb2_grpc, lead_pb2_grpc, webhook_pb2_grpc
from fenlo.v1 import lead_pb2 as L
from fenlo.v1 import webhook_pb2 as H
from fenlo.v1 import workspace_pb2 as W
from fenlo_server.app import FenloApp
from fenlo_server.config import Settings
from fenlo_server.events.bus import PublishedEvent
from fenlo_server.pipeline.registry import DEFAULT_PIPELINE
from tests.chat_helpers import ChatStream
from tests.conftest import (
    PG_SKIP,
    REDIS_ENV,
    _sqlite_url,
    make_settings,
    shared_embedders,
    start_app,
)
from tests.fakes.pinecone_server import FakePinecone
from tests.helpers import Api
from tests.lifecycle_helpers import (
    Hit,
    chat_turns,
    markers_by_store,
    report,
    scan_all_stores,
    table_dump,
)

PINECONE_KEY = "pc-erasure-scan"
# A Redis database number of this test's own on the shared server: the scan reads
# every key of it, and the cleanup deletes the keys a test made there.
REDIS_DB = 11
WAIT = 30.0


def mark(kind: str) -> str:
    """A marker: lower-case letters and digits, unique to this test run."""
    return f"zq{kind}{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------ a webhook receiver


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every request as it arrives and
    answers 200, or, while held, keeps the request open until released."""

    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def __post_init__(self) -> None:
        self.released.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def got(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append(Received(dict(self.headers.items()), body))
            state.released.wait(WAIT)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

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
        state.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------ the server under test


@dataclass
class Stack:
    api: Api
    app: FenloApp
    pinecone: FakePinecone
    receiver: Receiver
    settings: Settings


def private_redis_url() -> str | None:
    base = os.environ.get(REDIS_ENV)
    if not base:
        return None
    return urlunsplit(urlsplit(base)._replace(path=f"/{REDIS_DB}"))


@contextlib.asynccontextmanager
async def arq_worker(settings: Settings) -> AsyncIterator[None]:
    """A running `fenlo worker` (ARQ) in this process, with the session's embedders."""
    from arq.worker import Worker

    from fenlo_server.jobs.arq_worker import worker_settings
    from fenlo_server.jobs.factory import build_ingestor

    options = worker_settings(settings)
    startup = options["on_startup"]
    context: dict[str, Any] = {}

    async def on_startup(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        ctx["ingestor"] = build_ingestor(settings, ctx["db"], shared_embedders())
        context.update(ctx)

    options.update(on_startup=on_startup, poll_delay=0.05, handle_signals=False)
    worker = Worker(**options)
    task = asyncio.get_running_loop().create_task(worker.async_run())
    try:
        deadline = time.monotonic() + WAIT
        while "ingestor" not in context:
            assert not task.done(), task
            assert time.monotonic() < deadline, "the worker did not start"
            await asyncio.sleep(0.02)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await worker.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def stack(
    request: pytest.FixtureRequest,
    sqlite_template: Path,
    postgres_url: str | None,
    tmp_path: Path,
    receiver: Receiver,
) -> AsyncIterator[Stack]:
    if request.param == "sqlite":
        # The embedded layout: the database file in the data directory.
        url = _sqlite_url(sqlite_template, tmp_path / "data")
    elif postgres_url is None:
        pytest.skip(PG_SKIP)
    else:
        url = postgres_url
    redis_url = private_redis_url()
    tag = uuid.uuid4().hex[:12]
    settings = make_settings(
        tmp_path,
        url,
        redis_url=redis_url,
        jobs_queue=f"fenlo:test:erasure:{tag}",
        events_redis_prefix=f"fenlo-erasure-{tag}",
        pinecone_api_key=PINECONE_KEY,
        webhook_allow_private=True,
        webhook_retry_base_seconds=0.05,
        webhook_retry_max_seconds=0.2,
        webhook_max_attempts=50,
        webhook_poll_seconds=0.05,
        webhook_timeout_seconds=WAIT,
        webhook_concurrency=64,
        kb_ingest_workers=16,  # the ARQ worker's concurrency: every delivery in flight at once
        # No catch-up pass: its cursor would change the rows compared before and after.
        webhook_catchup_seconds=3600,
    )
    existing = await redis_keys(redis_url) if redis_url else set()
    async with FakePinecone(api_key=PINECONE_KEY) as pinecone:
        settings = settings.model_copy(update={"pinecone_index_host": pinecone.host})
        app = await start_app(settings)
        try:
            async with Api(app) as api, contextlib.AsyncExitStack() as workers:
                if redis_url:
                    await workers.enter_async_context(arq_worker(settings))
                yield Stack(api, app, pinecone, receiver, settings)
        finally:
            receiver.release()
            await app.stop(grace=0)
            if redis_url:
                await clean_redis(redis_url, existing)


async def redis_keys(url: str) -> set[bytes]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        return {key async for key in client.scan_iter(count=1000)}
    finally:
        await client.aclose()


async def clean_redis(url: str, existing: set[bytes]) -> None:
    """Delete the keys this test made (the database is this test's own)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        made = [key async for key in client.scan_iter(count=1000) if key not in existing]
        for start in range(0, len(made), 500):
            await client.delete(*made[start : start + 500])
    finally:
        await client.aclose()


# ------------------------------------------------------------------ helpers


def kb(api: Api) -> knowledge_pb2_grpc.KnowledgeServiceStub:
    return knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)


def leads(api: Api) -> lead_pb2_grpc.LeadServiceStub:
    return lead_pb2_grpc.LeadServiceStub(api.channel)


def hooks(api: Api) -> webhook_pb2_grpc.WebhookServiceStub:
    return webhook_pb2_grpc.WebhookServiceStub(api.channel)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, f"not within {WAIT}s: {what}"
        await asyncio.sleep(0.05)


async def add_document(
    api: Api, workspace: str, token: str, text: str, *, tag: str, title: str = "Guide"
) -> str:
    document = await kb(api).ImportText(
        K.ImportTextRequest(
            parent=f"workspaces/{workspace}",
            document=K.Document(title=title, tags=[tag]),
            text=text,
        ),
        metadata=api.md(token),
    )

    async def ready() -> bool:
        found = await kb(api).GetDocument(
            K.GetDocumentRequest(name=document.name), metadata=api.md(token)
        )
        assert found.status != K.DOCUMENT_STATUS_FAILED, found
        return found.status == K.DOCUMENT_STATUS_READY

    await eventually(ready, f"{document.name} ready")
    return document.name


async def create_hook(api: Api, workspace: str, token: str, url: str, note: str = "") -> str:
    created = await hooks(api).CreateWebhook(
        H.CreateWebhookRequest(
            parent=f"workspaces/{workspace}", webhook=H.Webhook(url=url, description=note)
        ),
        metadata=api.md(token),
    )
    return created.webhook.name


async def deliveries(api: Api, token: str, hook: str) -> list[H.Delivery]:
    response = await hooks(api).ListDeliveries(
        H.ListDeliveriesRequest(parent=hook, page_size=1000), metadata=api.md(token)
    )
    return list(response.deliveries)


async def all_delivered(api: Api, token: str, hook: str) -> None:
    """Wait until the webhook has no delivery left to make (bounded)."""

    async def done() -> bool:
        return all(
            d.state == H.DELIVERY_STATE_SUCCEEDED for d in await deliveries(api, token, hook)
        )

    await eventually(done, f"every delivery of {hook} made")


async def lead_of(api: Api, token: str, workspace: str, conversation: str) -> L.Lead:
    listed = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=f"workspaces/{workspace}", page_size=100), metadata=api.md(token)
    )
    [lead] = [lead for lead in listed.leads if lead.conversation == conversation]
    return lead


async def annotate(
    api: Api, token: str, workspace: str, conversation: str, marks: dict[str, str]
) -> None:
    """An agent's message, lead notes and a conversation label, each with a marker."""
    md = api.md(token)
    await api.conversations.PostAgentMessage(
        C.PostAgentMessageRequest(parent=conversation, text=f"Sam here, about {marks['agent']}."),
        metadata=md,
    )
    lead = await lead_of(api, token, workspace, conversation)
    await leads(api).UpdateLead(
        L.UpdateLeadRequest(
            lead=L.Lead(name=lead.name, notes=f"Call back about {marks['notes']}"),
            update_mask=field_mask_pb2.FieldMask(paths=["notes"]),
        ),
        metadata=md,
    )
    await api.conversations.UpdateConversation(
        C.UpdateConversationRequest(
            conversation=C.Conversation(name=conversation, metadata={"ref": marks["label"]}),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        ),
        metadata=md,
    )


def contact_marks() -> dict[str, str]:
    return {k: mark(k) for k in ("say", "mail", "human", "more", "agent", "notes", "label", "late")}


def turns(marks: dict[str, str], phone: str) -> list[str]:
    return [
        f"Hello, I am interested in the premium plan, reference {marks['say']}.",
        f"My email is {marks['mail']}@example.com and my phone is {phone}; "
        "my budget is $900, can you send a quote?",
        f"I want to talk to a human about my order {marks['human']}, please.",
    ]


def phone() -> str:
    digits = str(uuid.uuid4().int)[:7]
    return f"+1 415 {digits[:3]} {digits[3:]}"


def ids_of(names: list[str]) -> list[str]:
    return [n.rsplit("/", 1)[1] for n in names]


def digits(number: str) -> str:
    """The subscriber part of a phone number, as every normalisation keeps it."""
    return number.replace(" ", "")[-7:]


async def turn_with_requests_in_flight(
    stack: Stack, chat: ChatStream, text: str, *, workspace: str, token: str, hook: str
) -> PublishedEvent:
    """One more turn while the receiver holds its requests: wait until every event
    of the turn has a delivery whose request has reached the receiver (and waits
    there, unanswered). Returns the turn's last event."""
    events: list[PublishedEvent] = []

    async def capture(event: PublishedEvent) -> None:
        if event.workspace_id == workspace:
            events.append(event)

    capturing = stack.app.bus.subscribe("test-capture", capture)
    stack.receiver.hold()
    try:
        await chat.say(text)
        await chat.turn()
    finally:
        capturing.close()  # (the scan of the server's memory would find it)
    ids = {e.id for e in events}

    async def in_flight() -> bool:
        recorded = {d.event_id for d in await deliveries(stack.api, token, hook)}
        arrived = {r.headers["Fenlo-Event-Id"] for r in stack.receiver.got()}
        return ids <= recorded and ids <= arrived

    await eventually(in_flight, "the turn's webhook requests in flight")
    return events[-1]


def claimed(stack: Stack) -> set[str]:
    """The stores this configuration writes a contact's or a workspace's data to."""
    stores = {"rows", "events", "webhooks", "memory"}
    if stack.settings.redis_url:
        stores.add("redis")
    if stack.app.db.is_sqlite:
        stores |= {"sqlite_file", "files"}  # the database file is in the data directory
    return stores


def leftovers(found: dict[str, list[Hit]], erased: set[str]) -> list[Hit]:
    return [hit for hits in found.values() for hit in hits if hit.marker in erased]


def rows_naming(dump: dict[str, list[str]], needles: list[str]) -> dict[str, list[str]]:
    return {t: [r for r in rows if any(n in r for n in needles)] for t, rows in dump.items()}


# ------------------------------------------------------------------ EraseContact


async def test_erasing_a_contact_leaves_its_markers_in_no_store(stack: Stack) -> None:
    api, app, receiver = stack.api, stack.app, stack.receiver
    a, a_admin = await api.create_workspace("Scan A")
    b, b_admin = await api.create_workspace("Scan B")
    kb_mark = mark("kb")
    await add_document(
        api,
        a,
        a_admin,
        f"# Plans\n\nThe premium plan costs $900 a year, code {kb_mark}.",
        tag=kb_mark,
    )
    a_hook = await create_hook(api, a, a_admin, receiver.url)
    b_hook = await create_hook(api, b, b_admin, receiver.url)

    contact, other, b_contact = (f"crm{uuid.uuid4().hex[:16]}" for _ in range(3))
    gone, kept, b_kept = contact_marks(), contact_marks(), contact_marks()
    gone_phone = phone()
    first = await chat_turns(api, a_admin, a, contact, turns(gone, gone_phone))
    await annotate(api, a_admin, a, first.name, gone)
    mine = await chat_turns(api, a_admin, a, other, turns(kept, phone())[1:])
    await annotate(api, a_admin, a, mine.name, kept)
    theirs = await chat_turns(api, b_admin, b, b_contact, turns(b_kept, phone())[1:])
    await annotate(api, b_admin, b, theirs.name, b_kept)
    # A second conversation of the contact is open during the erasure (it holds its
    # lock in Redis), and its last turn's webhook requests are in flight then.
    live = ChatStream(api, a_admin)
    second = (await live.start(parent=f"workspaces/{a}", external_contact_id=contact)).conversation
    await live.say(f"Do you also sell the {gone['more']} bundle?")
    await live.turn()
    await all_delivered(api, a_admin, a_hook)
    await all_delivered(api, b_admin, b_hook)
    late = await turn_with_requests_in_flight(
        stack, live, f"And is {gone['late']} in stock?", workspace=a, token=a_admin, hook=a_hook
    )
    assert second.name in str(late.payload)

    erased = {contact, *gone.values(), digits(gone_phone), *ids_of([first.name, second.name])}
    # (the other two conversations had no first turn and no "more" or "late")
    used = ("mail", "human", "agent", "notes", "label")
    survivors = {other, b_contact, kb_mark, *(m[k] for m in (kept, b_kept) for k in used)}
    survivors |= set(ids_of([mine.name, theirs.name]))
    workspaces = [(a, a_admin), (b, b_admin)]

    async def scan(bodies: list[Received], *, memory: bool = True) -> dict[str, list[Hit]]:
        return await scan_all_stores(
            api,
            erased | survivors,
            workspaces=workspaces,
            pinecone=stack.pinecone,
            webhook_bodies=[r.body for r in bodies],
            memory=memory,
        )

    before = await scan(receiver.got())
    found = markers_by_store(before)
    for store in claimed(stack):
        assert found.get(store, set()) & erased, f"the scan of {store} finds nothing"
    assert erased <= found["rows"], erased - found["rows"]
    assert kb_mark in found["pinecone"]  # the scan reads the vector store's records
    assert not found["pinecone"] & erased  # (no conversation data goes there)
    # (not by the knowledge base's marker: the erased answers quote it too)
    theirs_only = sorted(survivors - {kb_mark})
    a_rows = rows_naming(await table_dump(app.db, a), theirs_only)
    b_rows = await table_dump(app.db, b)
    sent = len(receiver.got())

    response = await api.conversations.EraseContact(
        C.EraseContactRequest(parent=f"workspaces/{a}", external_contact_id=contact),
        metadata=api.md(a_admin),
    )

    assert (response.conversations_deleted, response.streams_ended) == (2, 1)
    await live.failure(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    # At once, while the requests are still in flight (their attempts hold what they
    # send in memory until they end):
    at_once = await scan([], memory=False)
    assert not leftovers(at_once, erased), report({"left": leftovers(at_once, erased)})
    receiver.release()  # the requests in flight get their answer
    # An event of the erased contact reaching the webhook dispatcher after the erasure,
    # as one read from Redis by a replica that lags behind would.
    await app.webhooks.record(late)
    await all_delivered(api, a_admin, a_hook)  # what is still due is sent
    after_erasure = receiver.got()[sent:]
    assert any(json.loads(r.body)["type"] == "contact.erased" for r in after_erasure)

    after = await scan(after_erasure)
    # The server's memory may keep none of the contact's texts, nor its id. The
    # conversations' ids may stay in bounded bookkeeping that holds no data of them
    # (without Redis: the per-conversation turn-rate buckets of the local limiter).
    conversation_ids = set(ids_of([first.name, second.name]))
    left = [
        hit
        for hit in leftovers(after, erased)
        if hit.store != "memory" or hit.marker not in conversation_ids
    ]
    assert not left, report({"left": left})
    # The other contact and the other workspace keep all they had.
    found = markers_by_store(after)
    assert survivors <= found["rows"], survivors - found["rows"]
    assert rows_naming(await table_dump(app.db, a), theirs_only) == a_rows
    assert await table_dump(app.db, b) == b_rows
    assert kb_mark in found["pinecone"]
    kept_ids = set(ids_of([mine.name, theirs.name]))
    assert kept_ids <= found["events"]
    if stack.settings.redis_url:
        assert kept_ids <= found["redis"]  # their events' stream entries


# ------------------------------------------------------------------ DeleteWorkspace


def workspace_marks() -> dict[str, str]:
    kinds = ("name", "assistant", "prompt", "handoff", "topic", "product", "key", "doc", "title")
    kinds += ("tag", "question", "answer", "hook", "ask", "search")
    return {k: mark(k) for k in kinds}


def settings_with(marks: dict[str, str]) -> W.WorkspaceSettings:
    """Settings that hold markers: texts, a contact, and pipeline parameters."""
    params = {
        "prompt_guard": {"blocked_topics": [f"{marks['topic']} prices"]},
        "entity_extraction": {"products": [f"{marks['product']} deluxe"]},
    }
    pipeline = []
    for name in DEFAULT_PIPELINE:
        step = W.PipelineStep(name=name)
        if name in params:
            step.params.update(params[name])
        pipeline.append(step)
    return W.WorkspaceSettings(
        assistant_name=f"Ava {marks['assistant']}",
        system_prompt=f"You are the assistant of shop {marks['prompt']}.",
        handoff_contact=W.HandoffContact(email=f"{marks['handoff']}@example.com"),
        pipeline=pipeline,
    )


@dataclass
class Filled:
    workspace: str
    token: str
    hook: str
    marks: dict[str, str]
    ids: set[str]  # the workspace's, its document's, conversations' and contacts' ids


async def fill(stack: Stack, display: str) -> Filled:
    """A workspace with a marker in everything it can hold."""
    api = stack.api
    marks = workspace_marks()
    workspace, token = await api.create_workspace(
        f"{display} {marks['name']}", settings=settings_with(marks)
    )
    md = api.md(token)
    parent = f"workspaces/{workspace}"
    document = await add_document(
        api,
        workspace,
        token,
        f"# Parking\n\nThe garage code is {marks['doc']}.",
        tag=marks["tag"],
        title=f"Guide {marks['title']}",
    )
    await kb(api).CreateCuratedAnswer(
        K.CreateCuratedAnswerRequest(
            parent=parent,
            curated_answer=K.CuratedAnswer(
                question=f"Is there a {marks['question']} discount?",
                answer=f"Yes, {marks['answer']}.",
            ),
        ),
        metadata=md,
    )
    key = await api.workspaces.CreateApiKey(
        W.CreateApiKeyRequest(parent=parent, api_key=W.ApiKey(display_name=f"key {marks['key']}")),
        metadata=md,
    )
    # A search with the key: its principal is cached (in Redis too), the query's vector.
    found = await kb(api).SearchKnowledge(
        K.SearchKnowledgeRequest(parent=parent, query=f"garage code {marks['search']}"),
        metadata=api.md(key.secret),
    )
    assert marks["doc"] in found.results[0].passage
    hook = await create_hook(
        api, workspace, token, f"{stack.receiver.url}?ref={marks['hook']}", note=marks["hook"]
    )
    contact = f"crm{uuid.uuid4().hex[:16]}"
    contact_markers = contact_marks()
    conversation = await chat_turns(
        api,
        token,
        workspace,
        contact,
        [f"What is the garage code, {marks['ask']}?", *turns(contact_markers, phone())[1:]],
    )
    await annotate(api, token, workspace, conversation.name, contact_markers)
    used = ("mail", "human", "agent", "notes", "label")
    marks |= {k: contact_markers[k] for k in used}
    ids = {workspace, contact, *ids_of([document, conversation.name])}
    return Filled(workspace, token, hook, marks, ids)


def records_of(pinecone: FakePinecone, workspace: str) -> dict[str, dict[str, Any]]:
    return {
        f"{namespace}/{record_id}": record.metadata
        for namespace, records in pinecone.namespaces.items()
        if namespace.startswith(f"{workspace}:")
        for record_id, record in records.items()
    }


async def test_deleting_a_workspace_leaves_its_markers_in_no_store(stack: Stack) -> None:
    api, app, receiver = stack.api, stack.app, stack.receiver
    doomed = await fill(stack, "doomed")
    kept = await fill(stack, "kept")
    # A live Chat stream of the doomed workspace holds a conversation lock, and its
    # last turn's webhook requests are in flight during the deletion.
    live = ChatStream(api, doomed.token)
    started = await live.start(parent=f"workspaces/{doomed.workspace}")
    doomed.ids.add(ids_of([started.conversation.name])[0])
    await all_delivered(api, doomed.token, doomed.hook)
    await all_delivered(api, kept.token, kept.hook)
    await turn_with_requests_in_flight(
        stack,
        live,
        f"Where do I park, {doomed.marks['ask']}?",
        workspace=doomed.workspace,
        token=doomed.token,
        hook=doomed.hook,
    )

    erased = set(doomed.marks.values()) | doomed.ids
    survivors = set(kept.marks.values()) | kept.ids
    # The server's memory may keep none of the workspace's texts. Its ids may stay in
    # bounded bookkeeping that holds no data of it (a per-workspace SQL option cache,
    # the last invalidation message read, a principal in a timer's context).
    texts = set(doomed.marks.values())
    workspaces = [(doomed.workspace, doomed.token), (kept.workspace, kept.token)]

    async def scan(bodies: list[Received], *, memory: bool = True) -> dict[str, list[Hit]]:
        return await scan_all_stores(
            api,
            erased | survivors,
            workspaces=workspaces,
            pinecone=stack.pinecone,
            webhook_bodies=[r.body for r in bodies],
            memory=memory,
        )

    before = await scan(receiver.got())
    found = markers_by_store(before)
    for store in claimed(stack) | {"pinecone"}:
        assert found.get(store, set()) & erased, f"the scan of {store} finds nothing"
    searched = doomed.marks["search"]  # a query is not stored, only its vector cached
    assert texts - {searched} <= found["rows"], texts - found["rows"]
    assert searched in found["memory"]
    kept_rows = await table_dump(app.db, kept.workspace)
    kept_vectors = records_of(stack.pinecone, kept.workspace)
    assert kept_vectors
    sent = len(receiver.got())

    await api.workspaces.DeleteWorkspace(
        W.DeleteWorkspaceRequest(name=f"workspaces/{doomed.workspace}"),
        metadata=api.md(api.platform_token),
    )

    await live.failure(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    # At once, while the requests (and their ARQ jobs) are still in flight:
    at_once = await scan([], memory=False)
    assert not leftovers(at_once, erased), report({"left": leftovers(at_once, erased)})
    receiver.release()  # the requests in flight get their answer
    await all_delivered(api, kept.token, kept.hook)
    after = await scan(receiver.got()[sent:])
    left = [hit for hit in leftovers(after, erased) if hit.store != "memory" or hit.marker in texts]
    assert not left, report({"left": left})
    # The other workspace keeps all it had.
    assert await table_dump(app.db, kept.workspace) == kept_rows
    assert records_of(stack.pinecone, kept.workspace) == kept_vectors
    found = markers_by_store(after)
    assert set(kept.marks.values()) - {kept.marks["search"]} <= found["rows"]
    assert kept.workspace in found["pinecone"]
    if stack.settings.redis_url:
        assert kept.workspace in found["redis"]
    search = await kb(api).SearchKnowledge(
        K.SearchKnowledgeRequest(parent=f"workspaces/{kept.workspace}", query="garage code"),
        metadata=api.md(kept.token),
    )
    assert kept.marks["doc"] in search.results[0].passage
