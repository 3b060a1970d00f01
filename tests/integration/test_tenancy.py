"""Tenancy and the permission table, through the real server.

1. A caller of workspace A reaches nothing of workspace B: every RPC that names B
   (or a resource under B, existing or not) is refused with PERMISSION_DENIED /
   PERMISSION_DENIED_WORKSPACE, the refusal carries none of B's data, and B is left
   untouched. A table holds one probe per RPC; a test walks the service descriptors
   so a new RPC cannot be forgotten.
2. Roles: every RPC for each workspace role, exactly as ``RPC_ROLES`` says (and
   ``RPC_ROLES`` exactly as the contract's "Roles:" comments say); platform admins
   may do everything; quotas are platform-only fields.
3. Page tokens are bound to the workspace that got them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import pkgutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio

import fenlo.v1
from fenlo.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    chat_pb2,
    conversation_pb2,
    event_pb2,
    event_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    lead_pb2,
    lead_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
    workspace_pb2,
)
from fenlo_server.auth.permissions import RPC_ROLES
from tests.helpers import Api, RichError, rich_error

W = "/fenlo.v1.WorkspaceService/"
C = "/fenlo.v1.ConversationService/"
CHAT = "/fenlo.v1.ChatService/"
KB = "/fenlo.v1.KnowledgeService/"
EV = "/fenlo.v1.EventService/"
LEADS = "/fenlo.v1.LeadService/"
STATS = "/fenlo.v1.AnalyticsService/"
WH = "/fenlo.v1.WebhookService/"
K = knowledge_pb2
H = webhook_pb2
# Webhooks of the probes: a public address (so the URL policy accepts it without
# FENLO_WEBHOOK_ALLOW_PRIVATE), created disabled, so nothing is ever sent to it.
PROBE_HOOK_URL = "https://1.1.1.1/fenlo-probe"


def hooks(api: Api) -> webhook_pb2_grpc.WebhookServiceStub:
    return webhook_pb2_grpc.WebhookServiceStub(api.channel)


async def create_probe_hook(api: Api, md: Metadata, parent: str, note: str = "") -> Any:
    return await hooks(api).CreateWebhook(
        H.CreateWebhookRequest(
            parent=parent,
            webhook=H.Webhook(url=PROBE_HOOK_URL, enabled=False, description=note),
        ),
        metadata=md,
    )


async def first_event(api: Api, md: Metadata, parent: str) -> event_pb2.Event:
    """Open StreamEvents on ``parent`` from the start, return the first event, close it.

    A refusal surfaces as the AioRpcError of the first read."""
    call = event_pb2_grpc.EventServiceStub(api.channel).StreamEvents(
        event_pb2.StreamEventsRequest(parent=parent), metadata=md
    )
    try:
        event = await call.read()
        assert isinstance(event, event_pb2.Event), "StreamEvents ended without an event"
        return event
    finally:
        call.cancel()


def kb(api: Api) -> knowledge_pb2_grpc.KnowledgeServiceStub:
    return knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)


def leads(api: Api) -> lead_pb2_grpc.LeadServiceStub:
    return lead_pb2_grpc.LeadServiceStub(api.channel)


def analytics(api: Api) -> analytics_pb2_grpc.AnalyticsServiceStub:
    return analytics_pb2_grpc.AnalyticsServiceStub(api.channel)


async def upload_text(api: Api, md: Metadata, parent: str, text: str) -> K.Document:
    async def parts() -> Any:
        yield K.UploadDocumentRequest(
            metadata=K.DocumentMetadata(parent=parent, document=K.Document(title="probe.txt"))
        )
        yield K.UploadDocumentRequest(chunk=text.encode())

    return await kb(api).UploadDocument(parts(), metadata=md)


DENIED_WORKSPACE = "PERMISSION_DENIED_WORKSPACE"
DENIED_ROLE = "PERMISSION_DENIED_ROLE"
OWN_ONLY = "OWN_ONLY"  # succeeds, but shows only the caller's own workspace

Metadata = tuple[tuple[str, str], ...]
OK = "OK"


def contract_methods() -> set[str]:
    """Every RPC of every service in every fenlo.v1 proto module."""
    methods: set[str] = set()
    for info in pkgutil.iter_modules(fenlo.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"fenlo.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.add(f"/{service.full_name}/{method.name}")
    return methods


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def ws_name(workspace_id: str) -> str:
    return f"workspaces/{workspace_id}"


# ---------------------------------------------------------------- chat streams


async def chat_start(api: Api, md: Metadata, start: chat_pb2.StartChat) -> chat_pb2.ChatResponse:
    """Open a Chat stream, send ``start``, return the first response and close it.

    A refusal surfaces as the AioRpcError of the first read.
    """
    call = api.chat.Chat(metadata=md)
    try:
        with contextlib.suppress(asyncio.InvalidStateError):  # refused: read() says why
            await call.write(chat_pb2.ChatRequest(start=start))
        first = await call.read()
        assert isinstance(first, chat_pb2.ChatResponse), "the Chat stream ended without a response"
        await call.done_writing()
        while await call.read() is not aio.EOF:
            pass
        return first
    finally:
        call.cancel()


async def export_all(api: Api, md: Metadata, parent: str) -> list[Any]:
    """Every response of an ExportConversations stream (a refusal raises on the first)."""
    call = api.conversations.ExportConversations(
        conversation_pb2.ExportConversationsRequest(parent=parent), metadata=md
    )
    return [response async for response in call]


# ---------------------------------------------------------------- (1) cross-workspace


@dataclass(frozen=True)
class Target:
    """Names under another workspace that a probe addresses."""

    workspace_id: str
    conversation: str
    api_key: str
    document: str
    curated_answer: str
    lead: str
    webhook: str

    @property
    def workspace(self) -> str:
        return ws_name(self.workspace_id)


Call = Callable[[Api, Metadata, Target], Awaitable[Any]]


@dataclass(frozen=True)
class Probe:
    label: str
    call: Call
    expect: str = DENIED_WORKSPACE


def _chat(start: Callable[[Target], chat_pb2.StartChat]) -> Call:
    def call(api: Api, md: Metadata, t: Target) -> Awaitable[Any]:
        return chat_start(api, md, start(t))

    return call


CROSS: dict[str, tuple[Probe, ...]] = {
    W + "CreateWorkspace": (
        # No workspace is named: a workspace admin simply may not create one.
        Probe(
            "create",
            lambda api, md, t: api.workspaces.CreateWorkspace(
                workspace_pb2.CreateWorkspaceRequest(
                    workspace=workspace_pb2.Workspace(display_name="intruder")
                ),
                metadata=md,
            ),
            DENIED_ROLE,
        ),
    ),
    W + "GetWorkspace": (
        Probe(
            "get",
            lambda api, md, t: api.workspaces.GetWorkspace(
                workspace_pb2.GetWorkspaceRequest(name=t.workspace), metadata=md
            ),
        ),
    ),
    W + "ListWorkspaces": (
        Probe(
            "list",
            lambda api, md, t: api.workspaces.ListWorkspaces(
                workspace_pb2.ListWorkspacesRequest(page_size=1000), metadata=md
            ),
            OWN_ONLY,
        ),
    ),
    W + "UpdateWorkspace": (
        Probe(
            "rename",
            lambda api, md, t: api.workspaces.UpdateWorkspace(
                workspace_pb2.UpdateWorkspaceRequest(
                    workspace=workspace_pb2.Workspace(name=t.workspace, display_name="hijacked"),
                    update_mask=mask("display_name"),
                ),
                metadata=md,
            ),
        ),
        Probe(
            "settings-without-mask",
            lambda api, md, t: api.workspaces.UpdateWorkspace(
                workspace_pb2.UpdateWorkspaceRequest(
                    workspace=workspace_pb2.Workspace(
                        name=t.workspace,
                        settings=workspace_pb2.WorkspaceSettings(system_prompt="leak it all"),
                    )
                ),
                metadata=md,
            ),
        ),
    ),
    W + "DeleteWorkspace": (
        Probe(
            "delete",
            lambda api, md, t: api.workspaces.DeleteWorkspace(
                workspace_pb2.DeleteWorkspaceRequest(name=t.workspace), metadata=md
            ),
        ),
    ),
    W + "CreateApiKey": (
        Probe(
            "create-admin-key",
            lambda api, md, t: api.workspaces.CreateApiKey(
                workspace_pb2.CreateApiKeyRequest(
                    parent=t.workspace,
                    api_key=workspace_pb2.ApiKey(
                        display_name="backdoor", roles=[workspace_pb2.ROLE_ADMIN]
                    ),
                ),
                metadata=md,
            ),
        ),
    ),
    W + "ListApiKeys": (
        Probe(
            "list",
            lambda api, md, t: api.workspaces.ListApiKeys(
                workspace_pb2.ListApiKeysRequest(parent=t.workspace), metadata=md
            ),
        ),
    ),
    W + "DeleteApiKey": (
        Probe(
            "delete",
            lambda api, md, t: api.workspaces.DeleteApiKey(
                workspace_pb2.DeleteApiKeyRequest(name=t.api_key), metadata=md
            ),
        ),
    ),
    C + "CreateConversation": (
        Probe(
            "create",
            lambda api, md, t: api.conversations.CreateConversation(
                conversation_pb2.CreateConversationRequest(
                    parent=t.workspace,
                    conversation=conversation_pb2.Conversation(external_contact_id="intruder"),
                ),
                metadata=md,
            ),
        ),
        Probe(
            # The workspace check comes before validation, so even a bad request
            # learns nothing about B.
            "create-invalid",
            lambda api, md, t: api.conversations.CreateConversation(
                conversation_pb2.CreateConversationRequest(
                    parent=t.workspace,
                    conversation=conversation_pb2.Conversation(channel=999),  # type: ignore[arg-type]
                ),
                metadata=md,
            ),
        ),
    ),
    C + "GetConversation": (
        Probe(
            "get",
            lambda api, md, t: api.conversations.GetConversation(
                conversation_pb2.GetConversationRequest(name=t.conversation), metadata=md
            ),
        ),
    ),
    C + "ListConversations": (
        Probe(
            "list",
            lambda api, md, t: api.conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(parent=t.workspace), metadata=md
            ),
        ),
        Probe(
            "list-by-contact",
            lambda api, md, t: api.conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(
                    parent=t.workspace, external_contact_id="b-contact", page_token="junk"
                ),
                metadata=md,
            ),
        ),
    ),
    C + "UpdateConversation": (
        Probe(
            "update",
            lambda api, md, t: api.conversations.UpdateConversation(
                conversation_pb2.UpdateConversationRequest(
                    conversation=conversation_pb2.Conversation(
                        name=t.conversation,
                        metadata={"owned": "by-a"},
                        state=conversation_pb2.CONVERSATION_STATE_CLOSED,
                    ),
                    update_mask=mask("metadata", "state"),
                ),
                metadata=md,
            ),
        ),
    ),
    C + "DeleteConversation": (
        Probe(
            "delete",
            lambda api, md, t: api.conversations.DeleteConversation(
                conversation_pb2.DeleteConversationRequest(name=t.conversation), metadata=md
            ),
        ),
    ),
    C + "ListMessages": (
        Probe(
            "list",
            lambda api, md, t: api.conversations.ListMessages(
                conversation_pb2.ListMessagesRequest(parent=t.conversation), metadata=md
            ),
        ),
    ),
    C + "PostAgentMessage": (
        Probe(
            "post",
            lambda api, md, t: api.conversations.PostAgentMessage(
                conversation_pb2.PostAgentMessageRequest(parent=t.conversation, text="planted"),
                metadata=md,
            ),
        ),
    ),
    C + "EraseContact": (
        Probe(
            "erase",
            lambda api, md, t: api.conversations.EraseContact(
                conversation_pb2.EraseContactRequest(
                    parent=t.workspace, external_contact_id="b-contact"
                ),
                metadata=md,
            ),
        ),
        Probe(
            # Refused before validation: an invalid request learns nothing either.
            "erase-invalid",
            lambda api, md, t: api.conversations.EraseContact(
                conversation_pb2.EraseContactRequest(parent=t.workspace), metadata=md
            ),
        ),
    ),
    C + "ExportConversations": (
        Probe("export", lambda api, md, t: export_all(api, md, t.workspace)),
    ),
    CHAT + "Chat": (
        Probe("start-parent", _chat(lambda t: chat_pb2.StartChat(parent=t.workspace))),
        Probe(
            "start-conversation",
            _chat(lambda t: chat_pb2.StartChat(conversation=t.conversation)),
        ),
    ),
    KB + "UploadDocument": (
        Probe("upload", lambda api, md, t: upload_text(api, md, t.workspace, "planted by A")),
    ),
    KB + "ImportText": (
        Probe(
            "import",
            lambda api, md, t: kb(api).ImportText(
                K.ImportTextRequest(parent=t.workspace, text="planted by A"), metadata=md
            ),
        ),
    ),
    KB + "GetDocument": (
        Probe(
            "get",
            lambda api, md, t: kb(api).GetDocument(
                K.GetDocumentRequest(name=t.document), metadata=md
            ),
        ),
    ),
    KB + "ListDocuments": (
        Probe(
            "list",
            lambda api, md, t: kb(api).ListDocuments(
                K.ListDocumentsRequest(parent=t.workspace), metadata=md
            ),
        ),
    ),
    KB + "DeleteDocument": (
        Probe(
            "delete",
            lambda api, md, t: kb(api).DeleteDocument(
                K.DeleteDocumentRequest(name=t.document), metadata=md
            ),
        ),
    ),
    KB + "ReindexDocument": (
        Probe(
            "reindex",
            lambda api, md, t: kb(api).ReindexDocument(
                K.ReindexDocumentRequest(name=t.document), metadata=md
            ),
        ),
    ),
    KB + "SearchKnowledge": (
        Probe(
            "search",
            lambda api, md, t: kb(api).SearchKnowledge(
                K.SearchKnowledgeRequest(parent=t.workspace, query="secret code"), metadata=md
            ),
        ),
    ),
    KB + "CreateCuratedAnswer": (
        Probe(
            "create",
            lambda api, md, t: kb(api).CreateCuratedAnswer(
                K.CreateCuratedAnswerRequest(
                    parent=t.workspace,
                    curated_answer=K.CuratedAnswer(question="q?", answer="planted by A"),
                ),
                metadata=md,
            ),
        ),
    ),
    KB + "GetCuratedAnswer": (
        Probe(
            "get",
            lambda api, md, t: kb(api).GetCuratedAnswer(
                K.GetCuratedAnswerRequest(name=t.curated_answer), metadata=md
            ),
        ),
    ),
    KB + "ListCuratedAnswers": (
        Probe(
            "list",
            lambda api, md, t: kb(api).ListCuratedAnswers(
                K.ListCuratedAnswersRequest(parent=t.workspace), metadata=md
            ),
        ),
    ),
    KB + "UpdateCuratedAnswer": (
        Probe(
            "update",
            lambda api, md, t: kb(api).UpdateCuratedAnswer(
                K.UpdateCuratedAnswerRequest(
                    curated_answer=K.CuratedAnswer(name=t.curated_answer, answer="hijacked"),
                    update_mask=mask("answer"),
                ),
                metadata=md,
            ),
        ),
    ),
    KB + "DeleteCuratedAnswer": (
        Probe(
            "delete",
            lambda api, md, t: kb(api).DeleteCuratedAnswer(
                K.DeleteCuratedAnswerRequest(name=t.curated_answer), metadata=md
            ),
        ),
    ),
    EV + "StreamEvents": (
        Probe("stream", lambda api, md, t: first_event(api, md, t.workspace)),
        Probe(
            "stream-filtered-resumed",
            lambda api, md, t: (
                event_pb2_grpc.EventServiceStub(api.channel)
                .StreamEvents(
                    event_pb2.StreamEventsRequest(
                        parent=t.workspace, types=["message.created"], start_after_seq=1
                    ),
                    metadata=md,
                )
                .read()
            ),
        ),
    ),
    LEADS + "ListLeads": (
        Probe(
            "list",
            lambda api, md, t: leads(api).ListLeads(
                lead_pb2.ListLeadsRequest(parent=t.workspace), metadata=md
            ),
        ),
        Probe(
            "list-by-conversation",
            lambda api, md, t: leads(api).ListLeads(
                lead_pb2.ListLeadsRequest(
                    parent=t.workspace, conversation=t.conversation, page_token="junk"
                ),
                metadata=md,
            ),
        ),
    ),
    LEADS + "GetLead": (
        Probe(
            "get",
            lambda api, md, t: leads(api).GetLead(
                lead_pb2.GetLeadRequest(name=t.lead), metadata=md
            ),
        ),
    ),
    LEADS + "UpdateLead": (
        Probe(
            "update",
            lambda api, md, t: leads(api).UpdateLead(
                lead_pb2.UpdateLeadRequest(
                    lead=lead_pb2.Lead(
                        name=t.lead, status=lead_pb2.LEAD_STATUS_LOST, owner="a", notes="by A"
                    ),
                    update_mask=mask("status", "owner", "notes"),
                ),
                metadata=md,
            ),
        ),
        Probe(
            # The workspace check comes before validation.
            "update-invalid",
            lambda api, md, t: leads(api).UpdateLead(
                lead_pb2.UpdateLeadRequest(
                    lead=lead_pb2.Lead(name=t.lead, score=100), update_mask=mask("score")
                ),
                metadata=md,
            ),
        ),
    ),
    STATS + "GetWorkspaceStats": (
        Probe(
            "stats",
            lambda api, md, t: analytics(api).GetWorkspaceStats(
                analytics_pb2.GetWorkspaceStatsRequest(workspace=t.workspace), metadata=md
            ),
        ),
        Probe(
            "stats-invalid-range",
            lambda api, md, t: analytics(api).GetWorkspaceStats(
                analytics_pb2.GetWorkspaceStatsRequest(
                    workspace=t.workspace, end_time={"seconds": 1}, start_time={"seconds": 2}
                ),
                metadata=md,
            ),
        ),
    ),
}


CROSS.update(
    {
        WH + "CreateWebhook": (
            Probe(
                "create",
                lambda api, md, t: hooks(api).CreateWebhook(
                    H.CreateWebhookRequest(
                        parent=t.workspace, webhook=H.Webhook(url=PROBE_HOOK_URL, enabled=False)
                    ),
                    metadata=md,
                ),
            ),
        ),
        WH + "GetWebhook": (
            Probe(
                "get",
                lambda api, md, t: hooks(api).GetWebhook(
                    H.GetWebhookRequest(name=t.webhook), metadata=md
                ),
            ),
        ),
        WH + "ListWebhooks": (
            Probe(
                "list",
                lambda api, md, t: hooks(api).ListWebhooks(
                    H.ListWebhooksRequest(parent=t.workspace), metadata=md
                ),
            ),
        ),
        WH + "UpdateWebhook": (
            Probe(
                "redirect",
                lambda api, md, t: hooks(api).UpdateWebhook(
                    H.UpdateWebhookRequest(
                        webhook=H.Webhook(name=t.webhook, url="https://1.0.0.1/stolen"),
                        update_mask=mask("url"),
                    ),
                    metadata=md,
                ),
            ),
            Probe(
                "rotate-secret",
                lambda api, md, t: hooks(api).UpdateWebhook(
                    H.UpdateWebhookRequest(
                        webhook=H.Webhook(name=t.webhook, secret="x" * 32),
                        update_mask=mask("secret"),
                    ),
                    metadata=md,
                ),
            ),
        ),
        WH + "DeleteWebhook": (
            Probe(
                "delete",
                lambda api, md, t: hooks(api).DeleteWebhook(
                    H.DeleteWebhookRequest(name=t.webhook), metadata=md
                ),
            ),
        ),
        WH + "ListDeliveries": (
            Probe(
                "list",
                lambda api, md, t: hooks(api).ListDeliveries(
                    H.ListDeliveriesRequest(parent=t.webhook), metadata=md
                ),
            ),
        ),
    }
)


def test_cross_workspace_table_covers_every_rpc() -> None:
    missing = contract_methods() - set(CROSS)
    assert not missing, f"add a cross-workspace probe for {sorted(missing)}"
    stale = set(CROSS) - contract_methods()
    assert not stale, f"probes for RPCs the contract does not have: {sorted(stale)}"
    assert all(CROSS.values())


@dataclass
class Tenant:
    """Workspace B and everything in it, with strings no other tenant may see."""

    workspace_id: str
    admin: str
    conversation: str
    api_key: str
    document: str
    curated_answer: str
    lead: str
    webhook: str
    secrets: list[str]


async def make_tenant(api: Api) -> Tenant:
    tag = uuid.uuid4().hex[:10]
    display = f"B-display-{tag}"
    prompt = f"B-system-prompt-{tag}"
    workspace = await api.workspaces.CreateWorkspace(
        workspace_pb2.CreateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                display_name=display,
                settings=workspace_pb2.WorkspaceSettings(system_prompt=prompt),
            )
        ),
        metadata=api.md(api.platform_token),
    )
    workspace_id = workspace.name.split("/")[1]
    admin = api.token(workspace_id, "admin", subject=f"b-admin-{tag}")
    contact = f"b-contact-{tag}"
    label = f"b-label-{tag}"
    conversation = await api.create_conversation(
        workspace_id, admin, external_contact_id=contact, metadata={"crm": label}
    )
    key = await api.workspaces.CreateApiKey(
        workspace_pb2.CreateApiKeyRequest(
            parent=ws_name(workspace_id),
            api_key=workspace_pb2.ApiKey(display_name=f"b-key-{tag}"),
        ),
        metadata=api.md(admin),
    )
    text = f"b-user-message-{tag}"
    call = api.chat.Chat(metadata=api.md(admin))
    await call.write(chat_pb2.ChatRequest(start=chat_pb2.StartChat(conversation=conversation.name)))
    await call.write(chat_pb2.ChatRequest(user_message=chat_pb2.UserMessage(text=text)))
    await call.done_writing()
    kinds = []
    while isinstance(response := await call.read(), chat_pb2.ChatResponse):
        kinds.append(response.WhichOneof("kind"))
    assert "turn_completed" in kinds, kinds
    passage = f"The secret code of B is b-passage-{tag}."
    document = await kb(api).ImportText(
        K.ImportTextRequest(
            parent=ws_name(workspace_id), text=passage, document=K.Document(title=f"b-doc-{tag}")
        ),
        metadata=api.md(admin),
    )
    curated = await kb(api).CreateCuratedAnswer(
        K.CreateCuratedAnswerRequest(
            parent=ws_name(workspace_id),
            curated_answer=K.CuratedAnswer(
                question=f"What is B's secret code {tag}?", answer=f"b-curated-{tag}"
            ),
        ),
        metadata=api.md(admin),
    )
    lead = await leads(api).ListLeads(
        lead_pb2.ListLeadsRequest(parent=ws_name(workspace_id)), metadata=api.md(admin)
    )
    assert [x.conversation for x in lead.leads] == [conversation.name]
    hook_note = f"b-webhook-{tag}"
    hook = await create_probe_hook(api, api.md(admin), ws_name(workspace_id), hook_note)
    return Tenant(
        workspace_id=workspace_id,
        admin=admin,
        conversation=conversation.name,
        api_key=key.api_key.name,
        document=document.name,
        curated_answer=curated.name,
        lead=lead.leads[0].name,
        webhook=hook.webhook.name,
        secrets=[
            hook.secret,
            hook_note,
            display,
            prompt,
            contact,
            label,
            text,
            key.api_key.prefix,
            key.secret,
            tag,
            passage,
        ],
    )


async def snapshot(api: Api, tenant: Tenant) -> dict[str, Any]:
    """What B looks like to its own admin."""
    md = api.md(tenant.admin)
    name = ws_name(tenant.workspace_id)
    workspace = await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=name), metadata=md
    )
    conversations = await api.conversations.ListConversations(
        conversation_pb2.ListConversationsRequest(parent=name), metadata=md
    )
    keys = await api.workspaces.ListApiKeys(
        workspace_pb2.ListApiKeysRequest(parent=name), metadata=md
    )
    messages = await api.conversations.ListMessages(
        conversation_pb2.ListMessagesRequest(parent=tenant.conversation), metadata=md
    )
    documents = await kb(api).ListDocuments(K.ListDocumentsRequest(parent=name), metadata=md)
    curated = await kb(api).ListCuratedAnswers(
        K.ListCuratedAnswersRequest(parent=name), metadata=md
    )
    lead_page = await leads(api).ListLeads(lead_pb2.ListLeadsRequest(parent=name), metadata=md)
    for conversation in conversations.conversations:
        conversation.ClearField("update_time")  # a read never changes it, but be safe
    workspace.ClearField("update_time")
    webhooks = await hooks(api).ListWebhooks(H.ListWebhooksRequest(parent=name), metadata=md)
    deliveries = await hooks(api).ListDeliveries(
        H.ListDeliveriesRequest(parent=tenant.webhook), metadata=md
    )
    return {
        "webhooks": list(webhooks.webhooks),
        "deliveries": list(deliveries.deliveries),
        "workspace": workspace,
        "conversations": list(conversations.conversations),
        "keys": [(k.name, k.prefix, list(k.roles)) for k in keys.api_keys],
        "messages": [(m.name, m.text) for m in messages.messages],
        # Status may move from PENDING to READY meanwhile; the documents must not change.
        "documents": [(d.name, d.title, d.size_bytes) for d in documents.documents],
        "curated": [(a.name, a.question, a.answer) for a in curated.curated_answers],
        "leads": list(lead_page.leads),
    }


def assert_no_secrets(what: str, blobs: list[bytes], secrets: list[str]) -> None:
    for secret in secrets:
        for blob in blobs:
            assert secret.encode() not in blob, f"{what} leaks {secret!r}"


@pytest.mark.parametrize("credential", ["jwt", "api_key"])
@pytest.mark.parametrize("target", ["existing", "missing-in-b", "missing-workspace"])
async def test_other_workspace_is_unreachable_from_every_rpc(
    api: Api, credential: str, target: str
) -> None:
    a_id, a_admin = await api.create_workspace("Workspace A")
    if credential == "api_key":
        key = await api.workspaces.CreateApiKey(
            workspace_pb2.CreateApiKeyRequest(
                parent=ws_name(a_id),
                api_key=workspace_pb2.ApiKey(roles=[workspace_pb2.ROLE_ADMIN]),
            ),
            metadata=api.md(a_admin),
        )
        a_credential = key.secret
    else:
        a_credential = a_admin
    b = await make_tenant(api)
    before = await snapshot(api, b)

    absent = "zz" + uuid.uuid4().hex[:12]
    if target == "existing":
        t = Target(
            b.workspace_id,
            b.conversation,
            b.api_key,
            b.document,
            b.curated_answer,
            b.lead,
            b.webhook,
        )
    elif target == "missing-in-b":
        base = ws_name(b.workspace_id)
        t = Target(
            b.workspace_id,
            f"{base}/conversations/{absent}",
            f"{base}/apiKeys/{absent}",
            f"{base}/documents/{absent}",
            f"{base}/curatedAnswers/{absent}",
            f"{base}/leads/{absent}",
            f"{base}/webhooks/{absent}",
        )
    else:
        t = Target(
            absent,
            f"workspaces/{absent}/conversations/c1",
            f"workspaces/{absent}/apiKeys/k1",
            f"workspaces/{absent}/documents/d1",
            f"workspaces/{absent}/curatedAnswers/a1",
            f"workspaces/{absent}/leads/l1",
            f"workspaces/{absent}/webhooks/h1",
        )

    md = api.md(a_credential)
    outcomes: dict[str, str] = {}
    for method, probes in CROSS.items():
        for probe in probes:
            label = f"{method.lstrip('/')} [{probe.label}]"
            if probe.expect == OWN_ONLY:
                response = await probe.call(api, md, t)
                assert [w.name for w in response.workspaces] == [ws_name(a_id)], label
                assert_no_secrets(label, [response.SerializeToString()], b.secrets)
                outcomes[label] = OWN_ONLY
                continue
            try:
                response = await probe.call(api, md, t)
            except aio.AioRpcError as exc:
                error = rich_error(exc)
                outcomes[label] = f"{error.code.name}/{error.reason}"
                trailers = [
                    v if isinstance(v, bytes) else v.encode()
                    for _, v in exc.trailing_metadata() or ()
                ]
                assert_no_secrets(label, [(exc.details() or "").encode(), *trailers], b.secrets)
            else:
                outcomes[label] = f"OK {str(response)[:200]}"
    expected = {
        f"{m.lstrip('/')} [{p.label}]": (
            p.expect if p.expect == OWN_ONLY else f"PERMISSION_DENIED/{p.expect}"
        )
        for m, probes in CROSS.items()
        for p in probes
    }
    assert outcomes == expected

    # Nothing A tried changed B.
    assert await snapshot(api, b) == before


# ---------------------------------------------------------------- (2) the permission table

ANY = frozenset({"admin", "agent", "service"})
ADMIN = frozenset({"admin"})

# The "Roles:" line of each RPC's comment in protos/fenlo/v1/*.proto, written out
# independently of the server's table (platform_admin is implied everywhere).
CONTRACT_ROLES: dict[str, frozenset[str]] = {
    W + "CreateWorkspace": frozenset(),
    W + "GetWorkspace": ANY,
    W + "ListWorkspaces": ANY,
    W + "UpdateWorkspace": ADMIN,
    W + "DeleteWorkspace": ADMIN,
    W + "CreateApiKey": ADMIN,
    W + "ListApiKeys": ADMIN,
    W + "DeleteApiKey": ADMIN,
    C + "CreateConversation": ANY,
    C + "GetConversation": ANY,
    C + "ListConversations": ANY,
    C + "UpdateConversation": ANY,
    C + "DeleteConversation": ADMIN,
    C + "ListMessages": ANY,
    C + "PostAgentMessage": frozenset({"admin", "agent"}),
    C + "EraseContact": ADMIN,
    C + "ExportConversations": ADMIN,
    CHAT + "Chat": ANY,
    KB + "UploadDocument": ADMIN,
    KB + "ImportText": ADMIN,
    KB + "GetDocument": ANY,
    KB + "ListDocuments": ANY,
    KB + "DeleteDocument": ADMIN,
    KB + "ReindexDocument": ADMIN,
    KB + "SearchKnowledge": ANY,
    KB + "CreateCuratedAnswer": ADMIN,
    KB + "GetCuratedAnswer": ANY,
    KB + "ListCuratedAnswers": ANY,
    KB + "UpdateCuratedAnswer": ADMIN,
    KB + "DeleteCuratedAnswer": ADMIN,
    EV + "StreamEvents": frozenset({"admin", "service"}),
    LEADS + "ListLeads": ANY,
    LEADS + "GetLead": ANY,
    LEADS + "UpdateLead": frozenset({"admin", "agent"}),
    STATS + "GetWorkspaceStats": frozenset({"admin", "service"}),
    WH + "CreateWebhook": ADMIN,
    WH + "GetWebhook": ADMIN,
    WH + "ListWebhooks": ADMIN,
    WH + "UpdateWebhook": ADMIN,
    WH + "DeleteWebhook": ADMIN,
    WH + "ListDeliveries": ADMIN,
}


def test_every_rpc_has_a_permission_entry() -> None:
    missing = contract_methods() - set(RPC_ROLES)
    assert not missing, f"RPC_ROLES has no entry for {sorted(missing)}"
    stale = set(RPC_ROLES) - contract_methods()
    assert not stale, f"RPC_ROLES names RPCs the contract does not have: {sorted(stale)}"


def test_permission_table_matches_the_contract() -> None:
    assert set(CONTRACT_ROLES) == contract_methods()
    assert {m: set(r) for m, r in RPC_ROLES.items()} == {
        m: set(r) for m, r in CONTRACT_ROLES.items()
    }


@dataclass(frozen=True)
class Own:
    """Resources of the caller's own workspace for the permission probes."""

    workspace_id: str
    conversation: str
    doomed_conversation: str
    api_key: str
    document: str
    doomed_document: str
    curated_answer: str
    doomed_curated_answer: str
    lead: str
    webhook: str
    doomed_webhook: str

    @property
    def workspace(self) -> str:
        return ws_name(self.workspace_id)


OwnCall = Callable[[Api, Metadata, Own], Awaitable[Any]]


async def _own_chat(api: Api, md: Metadata, own: Own) -> chat_pb2.ChatResponse:
    first = await chat_start(api, md, chat_pb2.StartChat(parent=own.workspace))
    assert first.WhichOneof("kind") == "session_started"
    return first


# One well-formed request per RPC on the caller's own workspace: an allowed call
# succeeds. DeleteWorkspace runs last.
OWN: dict[str, OwnCall] = {
    W + "CreateWorkspace": lambda api, md, o: api.workspaces.CreateWorkspace(
        workspace_pb2.CreateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(display_name="Another")
        ),
        metadata=md,
    ),
    W + "GetWorkspace": lambda api, md, o: api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=o.workspace), metadata=md
    ),
    W + "ListWorkspaces": lambda api, md, o: api.workspaces.ListWorkspaces(
        workspace_pb2.ListWorkspacesRequest(), metadata=md
    ),
    W + "UpdateWorkspace": lambda api, md, o: api.workspaces.UpdateWorkspace(
        workspace_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(name=o.workspace, display_name="Renamed"),
            update_mask=mask("display_name"),
        ),
        metadata=md,
    ),
    W + "CreateApiKey": lambda api, md, o: api.workspaces.CreateApiKey(
        workspace_pb2.CreateApiKeyRequest(
            parent=o.workspace, api_key=workspace_pb2.ApiKey(display_name="new")
        ),
        metadata=md,
    ),
    W + "ListApiKeys": lambda api, md, o: api.workspaces.ListApiKeys(
        workspace_pb2.ListApiKeysRequest(parent=o.workspace), metadata=md
    ),
    W + "DeleteApiKey": lambda api, md, o: api.workspaces.DeleteApiKey(
        workspace_pb2.DeleteApiKeyRequest(name=o.api_key), metadata=md
    ),
    C + "CreateConversation": lambda api, md, o: api.conversations.CreateConversation(
        conversation_pb2.CreateConversationRequest(
            parent=o.workspace, conversation=conversation_pb2.Conversation()
        ),
        metadata=md,
    ),
    C + "GetConversation": lambda api, md, o: api.conversations.GetConversation(
        conversation_pb2.GetConversationRequest(name=o.conversation), metadata=md
    ),
    C + "ListConversations": lambda api, md, o: api.conversations.ListConversations(
        conversation_pb2.ListConversationsRequest(parent=o.workspace), metadata=md
    ),
    C + "UpdateConversation": lambda api, md, o: api.conversations.UpdateConversation(
        conversation_pb2.UpdateConversationRequest(
            conversation=conversation_pb2.Conversation(name=o.conversation, metadata={"k": "v"}),
            update_mask=mask("metadata"),
        ),
        metadata=md,
    ),
    C + "DeleteConversation": lambda api, md, o: api.conversations.DeleteConversation(
        conversation_pb2.DeleteConversationRequest(name=o.doomed_conversation), metadata=md
    ),
    C + "ListMessages": lambda api, md, o: api.conversations.ListMessages(
        conversation_pb2.ListMessagesRequest(parent=o.conversation), metadata=md
    ),
    C + "PostAgentMessage": lambda api, md, o: api.conversations.PostAgentMessage(
        conversation_pb2.PostAgentMessageRequest(parent=o.conversation, text="Hello, I'm Ana."),
        metadata=md,
    ),
    C + "EraseContact": lambda api, md, o: api.conversations.EraseContact(
        conversation_pb2.EraseContactRequest(parent=o.workspace, external_contact_id="nobody-here"),
        metadata=md,
    ),
    C + "ExportConversations": lambda api, md, o: export_all(api, md, o.workspace),
    CHAT + "Chat": _own_chat,
    KB + "UploadDocument": lambda api, md, o: upload_text(api, md, o.workspace, "Own text."),
    KB + "ImportText": lambda api, md, o: kb(api).ImportText(
        K.ImportTextRequest(parent=o.workspace, text="Own text."), metadata=md
    ),
    KB + "GetDocument": lambda api, md, o: kb(api).GetDocument(
        K.GetDocumentRequest(name=o.document), metadata=md
    ),
    KB + "ListDocuments": lambda api, md, o: kb(api).ListDocuments(
        K.ListDocumentsRequest(parent=o.workspace), metadata=md
    ),
    KB + "DeleteDocument": lambda api, md, o: kb(api).DeleteDocument(
        K.DeleteDocumentRequest(name=o.doomed_document), metadata=md
    ),
    KB + "ReindexDocument": lambda api, md, o: kb(api).ReindexDocument(
        K.ReindexDocumentRequest(name=o.document), metadata=md
    ),
    KB + "SearchKnowledge": lambda api, md, o: kb(api).SearchKnowledge(
        K.SearchKnowledgeRequest(parent=o.workspace, query="hours"), metadata=md
    ),
    KB + "CreateCuratedAnswer": lambda api, md, o: kb(api).CreateCuratedAnswer(
        K.CreateCuratedAnswerRequest(
            parent=o.workspace, curated_answer=K.CuratedAnswer(question="q?", answer="a.")
        ),
        metadata=md,
    ),
    KB + "GetCuratedAnswer": lambda api, md, o: kb(api).GetCuratedAnswer(
        K.GetCuratedAnswerRequest(name=o.curated_answer), metadata=md
    ),
    KB + "ListCuratedAnswers": lambda api, md, o: kb(api).ListCuratedAnswers(
        K.ListCuratedAnswersRequest(parent=o.workspace), metadata=md
    ),
    KB + "UpdateCuratedAnswer": lambda api, md, o: kb(api).UpdateCuratedAnswer(
        K.UpdateCuratedAnswerRequest(
            curated_answer=K.CuratedAnswer(name=o.curated_answer, answer="New."),
            update_mask=mask("answer"),
        ),
        metadata=md,
    ),
    KB + "DeleteCuratedAnswer": lambda api, md, o: kb(api).DeleteCuratedAnswer(
        K.DeleteCuratedAnswerRequest(name=o.doomed_curated_answer), metadata=md
    ),
    # The workspace has events by now (at least the Chat probe's conversation.started).
    EV + "StreamEvents": lambda api, md, o: first_event(api, md, o.workspace),
    LEADS + "ListLeads": lambda api, md, o: leads(api).ListLeads(
        lead_pb2.ListLeadsRequest(parent=o.workspace), metadata=md
    ),
    LEADS + "GetLead": lambda api, md, o: leads(api).GetLead(
        lead_pb2.GetLeadRequest(name=o.lead), metadata=md
    ),
    LEADS + "UpdateLead": lambda api, md, o: leads(api).UpdateLead(
        lead_pb2.UpdateLeadRequest(
            lead=lead_pb2.Lead(name=o.lead, notes="Called back."), update_mask=mask("notes")
        ),
        metadata=md,
    ),
    STATS + "GetWorkspaceStats": lambda api, md, o: analytics(api).GetWorkspaceStats(
        analytics_pb2.GetWorkspaceStatsRequest(workspace=o.workspace), metadata=md
    ),
    WH + "CreateWebhook": lambda api, md, o: create_probe_hook(api, md, o.workspace),
    WH + "GetWebhook": lambda api, md, o: hooks(api).GetWebhook(
        H.GetWebhookRequest(name=o.webhook), metadata=md
    ),
    WH + "ListWebhooks": lambda api, md, o: hooks(api).ListWebhooks(
        H.ListWebhooksRequest(parent=o.workspace), metadata=md
    ),
    WH + "UpdateWebhook": lambda api, md, o: hooks(api).UpdateWebhook(
        H.UpdateWebhookRequest(
            webhook=H.Webhook(name=o.webhook, description="New."), update_mask=mask("description")
        ),
        metadata=md,
    ),
    WH + "DeleteWebhook": lambda api, md, o: hooks(api).DeleteWebhook(
        H.DeleteWebhookRequest(name=o.doomed_webhook), metadata=md
    ),
    WH + "ListDeliveries": lambda api, md, o: hooks(api).ListDeliveries(
        H.ListDeliveriesRequest(parent=o.webhook), metadata=md
    ),
    W + "DeleteWorkspace": lambda api, md, o: api.workspaces.DeleteWorkspace(
        workspace_pb2.DeleteWorkspaceRequest(name=o.workspace), metadata=md
    ),
}


def test_permission_probes_cover_every_rpc() -> None:
    assert set(OWN) == contract_methods()
    assert list(OWN)[-1] == W + "DeleteWorkspace"


async def make_own(api: Api, display_name: str = "Perms") -> Own:
    workspace_id, admin = await api.create_workspace(display_name)
    conversation = await api.create_conversation(workspace_id, admin)
    doomed = await api.create_conversation(workspace_id, admin)
    key = await api.workspaces.CreateApiKey(
        workspace_pb2.CreateApiKeyRequest(parent=ws_name(workspace_id)),
        metadata=api.md(admin),
    )
    md = api.md(admin)
    documents = [
        await kb(api).ImportText(
            K.ImportTextRequest(parent=ws_name(workspace_id), text="Opening hours: 9 to 5."),
            metadata=md,
        )
        for _ in range(2)
    ]
    curated = [
        await kb(api).CreateCuratedAnswer(
            K.CreateCuratedAnswerRequest(
                parent=ws_name(workspace_id),
                curated_answer=K.CuratedAnswer(question=f"Question {i}?", answer="Answer."),
            ),
            metadata=md,
        )
        for i in range(2)
    ]
    # A turn makes the conversation a lead.
    call = api.chat.Chat(metadata=md)
    await call.write(chat_pb2.ChatRequest(start=chat_pb2.StartChat(conversation=conversation.name)))
    await call.write(chat_pb2.ChatRequest(user_message=chat_pb2.UserMessage(text="Prices?")))
    await call.done_writing()
    while isinstance(await call.read(), chat_pb2.ChatResponse):
        pass
    lead = await leads(api).ListLeads(
        lead_pb2.ListLeadsRequest(parent=ws_name(workspace_id)), metadata=md
    )
    webhooks = [await create_probe_hook(api, md, ws_name(workspace_id)) for _ in range(2)]
    return Own(
        workspace_id,
        conversation.name,
        doomed.name,
        key.api_key.name,
        documents[0].name,
        documents[1].name,
        curated[0].name,
        curated[1].name,
        lead.leads[0].name,
        webhooks[0].webhook.name,
        webhooks[1].webhook.name,
    )


async def run_all(api: Api, md: Metadata, own: Own) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for method, call in OWN.items():
        try:
            await call(api, md, own)
        except aio.AioRpcError as exc:
            error = rich_error(exc)
            outcomes[method] = f"{error.code.name}/{error.reason}"
            if error.reason == DENIED_ROLE:
                assert error.metadata.get("method") == method.lstrip("/")
        else:
            outcomes[method] = OK
    return outcomes


@pytest.mark.parametrize("role", ["admin", "agent", "service"])
async def test_each_role_gets_exactly_its_rpcs(api: Api, role: str) -> None:
    own = await make_own(api)
    token = api.token(own.workspace_id, role, subject=f"{role}-user")
    outcomes = await run_all(api, api.md(token), own)
    expected = {
        method: OK if role in RPC_ROLES[method] else f"PERMISSION_DENIED/{DENIED_ROLE}"
        for method in OWN
    }
    assert outcomes == expected

    if role != "admin":
        # The refused calls changed nothing.
        md = api.md(api.platform_token)
        await api.conversations.GetConversation(
            conversation_pb2.GetConversationRequest(name=own.doomed_conversation), metadata=md
        )
        keys = await api.workspaces.ListApiKeys(
            workspace_pb2.ListApiKeysRequest(parent=own.workspace), metadata=md
        )
        assert [k.name for k in keys.api_keys] == [own.api_key]
        workspace = await api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=own.workspace), metadata=md
        )
        assert workspace.display_name == "Perms"


@pytest.mark.parametrize("ws_claim", ["none", "other-workspace"])
async def test_platform_admin_may_do_everything_on_any_workspace(api: Api, ws_claim: str) -> None:
    own = await make_own(api, "Someone else's")
    home = None
    if ws_claim == "other-workspace":
        home, _ = await api.create_workspace("Operator home")
    token = api.token(home, "platform_admin", subject="operator")
    outcomes = await run_all(api, api.md(token), own)
    assert outcomes == dict.fromkeys(OWN, OK)
    with pytest.raises(aio.AioRpcError) as info:
        await api.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(name=own.workspace), metadata=api.md(token)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # it really was deleted


async def _update(
    api: Api, token: str, workspace: workspace_pb2.Workspace, *paths: str
) -> workspace_pb2.Workspace:
    return await api.workspaces.UpdateWorkspace(
        workspace_pb2.UpdateWorkspaceRequest(workspace=workspace, update_mask=mask(*paths)),
        metadata=api.md(token),
    )


async def test_only_platform_admin_changes_quotas(api: Api) -> None:
    workspace_id, admin = await api.create_workspace(
        "Quotas", quotas=workspace_pb2.WorkspaceQuotas(requests_per_minute=100)
    )
    name = ws_name(workspace_id)
    raised = workspace_pb2.WorkspaceQuotas(requests_per_minute=1_000_000)
    attempts: list[tuple[workspace_pb2.Workspace, tuple[str, ...]]] = [
        (workspace_pb2.Workspace(name=name, quotas=raised), ("quotas",)),
        (workspace_pb2.Workspace(name=name, quotas=raised), ("quotas.requests_per_minute",)),
        (workspace_pb2.Workspace(name=name, quotas=raised), ()),  # implied by the set field
        (workspace_pb2.Workspace(name=name, display_name="X", quotas=raised), ("*",)),
        (
            workspace_pb2.Workspace(name=name, display_name="Sneaky", quotas=raised),
            ("display_name", "quotas"),
        ),
    ]
    for workspace, paths in attempts:
        with pytest.raises(aio.AioRpcError) as info:
            await _update(api, admin, workspace, *paths)
        error = rich_error(info.value)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, DENIED_ROLE), (
            paths,
            error,
        )
        assert error.metadata.get("field", "").startswith("quotas"), error

    got = await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=name), metadata=api.md(admin)
    )
    assert got.quotas.requests_per_minute == 100
    assert got.display_name == "Quotas"

    # The workspace admin may change the settings and the name...
    settings = workspace_pb2.WorkspaceSettings(system_prompt="Be brief.", assistant_name="Ada")
    updated = await _update(
        api, admin, workspace_pb2.Workspace(name=name, settings=settings), "settings"
    )
    assert updated.settings.system_prompt == "Be brief."
    updated = await _update(
        api,
        admin,
        workspace_pb2.Workspace(
            name=name, settings=workspace_pb2.WorkspaceSettings(system_prompt="Be kind.")
        ),
        "settings.system_prompt",
    )
    assert updated.settings.system_prompt == "Be kind."
    assert updated.settings.assistant_name == "Ada"
    updated = await _update(
        api, admin, workspace_pb2.Workspace(name=name, display_name="Renamed"), "display_name"
    )
    assert updated.display_name == "Renamed"
    assert updated.quotas.requests_per_minute == 100

    # ...and the platform admin may change the quotas.
    updated = await _update(
        api, api.platform_token, workspace_pb2.Workspace(name=name, quotas=raised), "quotas"
    )
    assert updated.quotas.requests_per_minute == 1_000_000
    got = await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=name), metadata=api.md(admin)
    )
    assert got.quotas.requests_per_minute == 1_000_000
    assert got.settings.system_prompt == "Be kind."


async def test_list_workspaces_shows_a_caller_only_its_own(api: Api) -> None:
    ids = [(await api.create_workspace(f"List {i}"))[0] for i in range(3)]
    a = ids[1]
    key = await api.workspaces.CreateApiKey(
        workspace_pb2.CreateApiKeyRequest(
            parent=ws_name(a), api_key=workspace_pb2.ApiKey(roles=[workspace_pb2.ROLE_AGENT])
        ),
        metadata=api.md(api.platform_token),
    )
    credentials = [api.token(a, role) for role in ("admin", "agent", "service")]
    credentials.append(key.secret)
    for credential in credentials:
        for size in (0, 1, 1000):
            listed = await api.workspaces.ListWorkspaces(
                workspace_pb2.ListWorkspacesRequest(page_size=size), metadata=api.md(credential)
            )
            assert [w.name for w in listed.workspaces] == [ws_name(a)]
            assert listed.next_page_token == ""
    everything = await api.workspaces.ListWorkspaces(
        workspace_pb2.ListWorkspacesRequest(page_size=1000), metadata=api.md(api.platform_token)
    )
    assert {ws_name(i) for i in ids} <= {w.name for w in everything.workspaces}


async def test_agent_api_key_cannot_delete_a_conversation(api: Api) -> None:
    workspace_id, admin = await api.create_workspace("Agents")
    conversation = await api.create_conversation(workspace_id, admin)
    keys = {}
    for role in (workspace_pb2.ROLE_AGENT, workspace_pb2.ROLE_ADMIN):
        created = await api.workspaces.CreateApiKey(
            workspace_pb2.CreateApiKeyRequest(
                parent=ws_name(workspace_id), api_key=workspace_pb2.ApiKey(roles=[role])
            ),
            metadata=api.md(admin),
        )
        keys[role] = created.secret
    request = conversation_pb2.DeleteConversationRequest(name=conversation.name)
    with pytest.raises(aio.AioRpcError) as info:
        await api.conversations.DeleteConversation(
            request, metadata=api.md(keys[workspace_pb2.ROLE_AGENT])
        )
    error = rich_error(info.value)
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, DENIED_ROLE)
    # The agent key still works for what agents may do, and the conversation is intact.
    got = await api.conversations.GetConversation(
        conversation_pb2.GetConversationRequest(name=conversation.name),
        metadata=api.md(keys[workspace_pb2.ROLE_AGENT]),
    )
    assert got.name == conversation.name
    await api.conversations.DeleteConversation(
        request, metadata=api.md(keys[workspace_pb2.ROLE_ADMIN])
    )


# ---------------------------------------------------------------- (3) page tokens


def assert_page_token_invalid(exc: aio.AioRpcError, leaked: list[str]) -> RichError:
    error = rich_error(exc)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == "PAGE_TOKEN_INVALID", error
    assert [f for f, _ in error.violations] == ["page_token"]
    assert_no_secrets("page-token refusal", [(exc.details() or "").encode()], leaked)
    return error


async def test_page_tokens_are_bound_to_the_workspace(api: Api) -> None:
    a_id, a_admin = await api.create_workspace("Pages A")
    b_id, b_admin = await api.create_workspace("Pages B")
    a_contacts = [f"a-contact-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    for contact in a_contacts:
        await api.create_conversation(a_id, a_admin, external_contact_id=contact)
    await api.create_conversation(b_id, b_admin, external_contact_id="b-own")
    await api.create_conversation(b_id, b_admin, external_contact_id="b-own-2")

    first = await api.conversations.ListConversations(
        conversation_pb2.ListConversationsRequest(parent=ws_name(a_id), page_size=1),
        metadata=api.md(a_admin),
    )
    a_token = first.next_page_token
    assert a_token

    # B replays A's token on its own workspace (same query otherwise): refused.
    for credential in (b_admin, api.token(b_id, "agent", subject="tester")):
        with pytest.raises(aio.AioRpcError) as info:
            await api.conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(
                    parent=ws_name(b_id), page_size=1, page_token=a_token
                ),
                metadata=api.md(credential),
            )
        assert_page_token_invalid(info.value, a_contacts)

    # The token is fine for A itself: it continues A's listing.
    second = await api.conversations.ListConversations(
        conversation_pb2.ListConversationsRequest(
            parent=ws_name(a_id), page_size=1, page_token=a_token
        ),
        metadata=api.md(a_admin),
    )
    assert [c.external_contact_id for c in second.conversations] == [a_contacts[1]]

    # Same for API-key listings.
    for _ in range(2):
        await api.workspaces.CreateApiKey(
            workspace_pb2.CreateApiKeyRequest(parent=ws_name(a_id)), metadata=api.md(a_admin)
        )
    keys = await api.workspaces.ListApiKeys(
        workspace_pb2.ListApiKeysRequest(parent=ws_name(a_id), page_size=1),
        metadata=api.md(a_admin),
    )
    assert keys.next_page_token
    with pytest.raises(aio.AioRpcError) as info:
        await api.workspaces.ListApiKeys(
            workspace_pb2.ListApiKeysRequest(
                parent=ws_name(b_id), page_size=1, page_token=keys.next_page_token
            ),
            metadata=api.md(b_admin),
        )
    assert_page_token_invalid(info.value, [])

    # A platform admin's workspace listing token does not let A page through them all.
    everything = await api.workspaces.ListWorkspaces(
        workspace_pb2.ListWorkspacesRequest(page_size=1), metadata=api.md(api.platform_token)
    )
    assert everything.next_page_token
    with pytest.raises(aio.AioRpcError) as info:
        await api.workspaces.ListWorkspaces(
            workspace_pb2.ListWorkspacesRequest(page_size=1, page_token=everything.next_page_token),
            metadata=api.md(a_admin),
        )
    assert_page_token_invalid(info.value, [])
