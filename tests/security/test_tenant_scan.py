"""Nothing workspace B can read ever contains workspace A's data.

tests/integration/test_tenancy.py shows that B addressing A's resources is
refused on every RPC. This is the other half: A and B are filled alike (the same
kinds of data, near-identical knowledge-base passages, the same questions), A
with unique marker strings; then B reads everything it may read in its own
workspace — every read RPC of the contract, with filters and queries that would
match A's data, a chat turn whose retrieval and curated answers could reach A's
knowledge base, its event stream from the start and its webhook's deliveries on
a local receiver — and every response, event, citation and delivered body is
scanned for A's markers. The same scan finds B's own markers (so it does see
the data), and a table check makes a new RPC of the contract fail until it is
classified here as read (scanned) or as a change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from grpc import aio

from fenlo.v1 import (
    analytics_pb2,
    chat_pb2,
    conversation_pb2,
    event_pb2,
    event_pb2_grpc,
    knowledge_pb2,
    lead_pb2,
    webhook_pb2,
    workspace_pb2,
)
from tests.chat_helpers import ChatStream
from tests.conftest import _sqlite_url
from tests.helpers import Api
from tests.integration.test_tenancy import (
    CHAT,
    EV,
    KB,
    LEADS,
    STATS,
    WH,
    C,
    Tenant,
    W,
    analytics,
    contract_methods,
    hooks,
    kb,
    leads,
    make_tenant,
    ws_name,
)
from tests.integration.test_webhooks import Receiver, create_hook, fast_app, receiver, wait_final
from tests.lifecycle_helpers import chat_turns

__all__ = ["receiver"]  # the fixture, imported for pytest

K = knowledge_pb2
H = webhook_pb2

# Every RPC that changes something; everything else is a read B's scan calls.
CHANGES = {
    W + "CreateWorkspace",
    W + "UpdateWorkspace",
    W + "DeleteWorkspace",
    W + "CreateApiKey",
    W + "DeleteApiKey",
    C + "CreateConversation",
    C + "UpdateConversation",
    C + "DeleteConversation",
    C + "PostAgentMessage",
    C + "EraseContact",
    KB + "UploadDocument",
    KB + "ImportText",
    KB + "DeleteDocument",
    KB + "ReindexDocument",
    KB + "CreateCuratedAnswer",
    KB + "UpdateCuratedAnswer",
    KB + "DeleteCuratedAnswer",
    LEADS + "UpdateLead",
    WH + "CreateWebhook",
    WH + "UpdateWebhook",
    WH + "DeleteWebhook",
}

Read = Callable[[Api, Any, Tenant, Tenant], Awaitable[list[bytes]]]


def _error_bytes(error: aio.AioRpcError) -> bytes:
    """What a refused call tells the caller: its details and trailing metadata."""
    parts = [(error.details() or "").encode()]
    for _, value in error.trailing_metadata() or ():
        parts.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\n".join(parts)


async def _one(*responses: Awaitable[Message]) -> list[bytes]:
    out: list[bytes] = []
    for response in responses:
        try:
            out.append((await response).SerializeToString())
        except aio.AioRpcError as error:  # a filter B may not use is refused: scanned too
            out.append(_error_bytes(error))
    return out


async def _streamed(call: Any, quiet: float = 1.0) -> list[bytes]:
    """A server stream's messages until it ends or stays quiet for ``quiet`` s."""
    out: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        while True:
            item = await asyncio.wait_for(call.read(), quiet)
            if item is aio.EOF:
                break
            out.append(item.SerializeToString())
    call.cancel()
    return out


def _mark(tenant: Tenant, prefix: str) -> str:
    return next(s for s in tenant.secrets if s.startswith(prefix))


def _contact(tenant: Tenant) -> str:
    return _mark(tenant, "b-contact-")


def _passage(tenant: Tenant) -> str:
    return _mark(tenant, "The secret code of B")


async def _chat(api: Api, md: Any, b: Tenant, a: Tenant) -> list[bytes]:
    """A turn in B that retrieval and curated answers could answer from A's data."""
    chat = ChatStream(api, b.admin)
    await chat.start(parent=ws_name(b.workspace_id))
    await chat.say("What is the secret code of B?")
    turn = await chat.turn()
    chat.call.cancel()
    return [response.SerializeToString() for response in turn.events]


# B's reads, in its own workspace; ``a`` supplies filter values that would match A.
READS: dict[str, Read] = {
    W + "GetWorkspace": lambda api, md, b, a: _one(
        api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=ws_name(b.workspace_id)), metadata=md
        )
    ),
    W + "ListWorkspaces": lambda api, md, b, a: _one(
        api.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest(), metadata=md)
    ),
    W + "ListApiKeys": lambda api, md, b, a: _one(
        api.workspaces.ListApiKeys(
            workspace_pb2.ListApiKeysRequest(parent=ws_name(b.workspace_id)), metadata=md
        )
    ),
    C + "GetConversation": lambda api, md, b, a: _one(
        api.conversations.GetConversation(
            conversation_pb2.GetConversationRequest(name=b.conversation), metadata=md
        )
    ),
    C + "ListConversations": lambda api, md, b, a: _one(
        api.conversations.ListConversations(
            conversation_pb2.ListConversationsRequest(parent=ws_name(b.workspace_id)),
            metadata=md,
        ),
        api.conversations.ListConversations(
            conversation_pb2.ListConversationsRequest(
                parent=ws_name(b.workspace_id), external_contact_id=_contact(a)
            ),
            metadata=md,
        ),
    ),
    C + "ListMessages": lambda api, md, b, a: _one(
        api.conversations.ListMessages(
            conversation_pb2.ListMessagesRequest(parent=b.conversation), metadata=md
        )
    ),
    C + "ExportConversations": lambda api, md, b, a: _streamed(
        api.conversations.ExportConversations(
            conversation_pb2.ExportConversationsRequest(parent=ws_name(b.workspace_id)),
            metadata=md,
        )
    ),
    CHAT + "Chat": _chat,
    KB + "GetDocument": lambda api, md, b, a: _one(
        kb(api).GetDocument(K.GetDocumentRequest(name=b.document), metadata=md)
    ),
    KB + "ListDocuments": lambda api, md, b, a: _one(
        kb(api).ListDocuments(K.ListDocumentsRequest(parent=ws_name(b.workspace_id)), metadata=md)
    ),
    KB + "SearchKnowledge": lambda api, md, b, a: _one(
        kb(api).SearchKnowledge(
            K.SearchKnowledgeRequest(
                parent=ws_name(b.workspace_id), query="What is the secret code of B?"
            ),
            metadata=md,
        ),
        kb(api).SearchKnowledge(
            K.SearchKnowledgeRequest(parent=ws_name(b.workspace_id), query=_passage(a)),
            metadata=md,
        ),
    ),
    KB + "GetCuratedAnswer": lambda api, md, b, a: _one(
        kb(api).GetCuratedAnswer(K.GetCuratedAnswerRequest(name=b.curated_answer), metadata=md)
    ),
    KB + "ListCuratedAnswers": lambda api, md, b, a: _one(
        kb(api).ListCuratedAnswers(
            K.ListCuratedAnswersRequest(parent=ws_name(b.workspace_id)), metadata=md
        )
    ),
    EV + "StreamEvents": lambda api, md, b, a: _streamed(
        event_pb2_grpc.EventServiceStub(api.channel).StreamEvents(
            event_pb2.StreamEventsRequest(parent=ws_name(b.workspace_id)), metadata=md
        )
    ),
    LEADS + "ListLeads": lambda api, md, b, a: _one(
        leads(api).ListLeads(
            lead_pb2.ListLeadsRequest(parent=ws_name(b.workspace_id)), metadata=md
        ),
        leads(api).ListLeads(
            lead_pb2.ListLeadsRequest(parent=ws_name(b.workspace_id), conversation=a.conversation),
            metadata=md,
        ),
    ),
    LEADS + "GetLead": lambda api, md, b, a: _one(
        leads(api).GetLead(lead_pb2.GetLeadRequest(name=b.lead), metadata=md)
    ),
    STATS + "GetWorkspaceStats": lambda api, md, b, a: _one(
        analytics(api).GetWorkspaceStats(
            analytics_pb2.GetWorkspaceStatsRequest(workspace=ws_name(b.workspace_id)), metadata=md
        )
    ),
    WH + "GetWebhook": lambda api, md, b, a: _one(
        hooks(api).GetWebhook(H.GetWebhookRequest(name=b.webhook), metadata=md)
    ),
    WH + "ListWebhooks": lambda api, md, b, a: _one(
        hooks(api).ListWebhooks(H.ListWebhooksRequest(parent=ws_name(b.workspace_id)), metadata=md)
    ),
    WH + "ListDeliveries": lambda api, md, b, a: _one(
        hooks(api).ListDeliveries(H.ListDeliveriesRequest(parent=b.webhook), metadata=md)
    ),
}


def test_every_rpc_is_a_read_scanned_here_or_a_change() -> None:
    methods = contract_methods()
    unclassified = methods - set(READS) - CHANGES
    assert not unclassified, f"classify {sorted(unclassified)} as a read (scan it) or a change"
    assert not (set(READS) & CHANGES)
    assert set(READS) | CHANGES == methods


def markers(tenant: Tenant) -> list[str]:
    """Strings only ``tenant``'s data holds: its markers and its resource ids."""
    ids = [tenant.workspace_id, tenant.conversation.rsplit("/", 1)[1]]
    return [*tenant.secrets, *ids]


def found(blobs: dict[str, list[bytes]], needles: list[str]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for what, items in blobs.items():
        for needle in needles:
            if any(needle.encode() in blob for blob in items):
                hits.setdefault(what, []).append(needle)
    return hits


async def test_nothing_b_reads_contains_a_s_data(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    app = await fast_app(tmp_path, database_url)
    try:
        async with Api(app) as api:
            a = await make_tenant(api)
            b = await make_tenant(api)
            # B's webhook gets every event of B's workspace on a local receiver.
            hook = await create_hook(api, b.workspace_id, b.admin, receiver.url)
            for tenant in (a, b):  # both knowledge bases searchable before the scan
                await wait_ready(api, tenant)
            # A reads its own data first, so every cache holds A's entries.
            for read in READS.values():
                await read(api, api.md(a.admin), a, b)

            blobs: dict[str, list[bytes]] = {}
            for method, read in READS.items():
                blobs[method] = await read(api, api.md(b.admin), b, a)
            deliveries = await wait_final(api, b.admin, hook.webhook.name, count=3)
            blobs["webhook deliveries"] = [d.SerializeToString() for d in deliveries]
            blobs["webhook bodies"] = [r.body for r in receiver.got()]

            assert found(blobs, markers(a)) == {}
            # The scan sees the data: B's own markers are where B's data is.
            own = found(blobs, markers(b))
            for method in (
                C + "ListMessages",
                C + "ExportConversations",
                KB + "SearchKnowledge",
                KB + "ListCuratedAnswers",
                EV + "StreamEvents",
                W + "GetWorkspace",
                "webhook bodies",
            ):
                assert method in own, (method, sorted(own))
            chat = [chat_pb2.ChatResponse.FromString(x) for x in blobs[CHAT + "Chat"]]
            assert any(r.WhichOneof("kind") == "turn_completed" for r in chat)
    finally:
        await app.stop(grace=0)


async def wait_ready(api: Api, tenant: Tenant) -> None:
    for _ in range(300):
        document = await kb(api).GetDocument(
            K.GetDocumentRequest(name=tenant.document), metadata=api.md(tenant.admin)
        )
        if document.status == K.DOCUMENT_STATUS_READY:
            return
        assert document.status != K.DOCUMENT_STATUS_FAILED, document
        await asyncio.sleep(0.1)
    raise AssertionError(f"{tenant.document} never became ready")


async def test_a_cookie_one_workspace_s_receiver_sets_never_reaches_another_s(
    sqlite_template: Path, tmp_path: Path, receiver: Receiver
) -> None:
    """One HTTP client sends every workspace's webhooks; it keeps no cookie."""
    receiver.set_cookie = "session=a-secret-cookie; Path=/"
    app = await fast_app(tmp_path, _sqlite_url(sqlite_template, tmp_path / "db"))
    try:
        async with Api(app) as api:
            delivered = []
            for name in ("Cookie A", "Cookie B"):
                workspace, admin = await api.create_workspace(name)
                hook = await create_hook(
                    api, workspace, admin, receiver.url, event_types=["turn.completed"]
                )
                await chat_turns(api, admin, workspace, f"contact-{name}", ["Hello there"])
                delivered += await wait_final(api, admin, hook.webhook.name, count=1)
            assert [d.state for d in delivered] == [H.DELIVERY_STATE_SUCCEEDED] * 2
            requests = receiver.got()
            assert len(requests) == 2
            assert all("Cookie" not in r.headers for r in requests), [r.headers for r in requests]
    finally:
        await app.stop(grace=0)
