"""The permission table: which roles may call which RPC.

A platform admin may call every RPC on every workspace. Every other principal
needs one of the roles listed for the method and can only address resources
of its own workspace. A method that is not in the table is refused (fail
closed); a test checks that every RPC of the contract has an entry. The same
table is published in docs/authentication.md (a test keeps them equal).
"""

from __future__ import annotations

from fenlo_server.auth.principal import ADMIN, AGENT, PLATFORM_ADMIN, SERVICE

ANY_ROLE = frozenset({ADMIN, AGENT, SERVICE})
STAFF = frozenset({ADMIN, AGENT, SERVICE})
ADMIN_ONLY = frozenset({ADMIN})
PLATFORM_ONLY: frozenset[str] = frozenset()

_W = "/fenlo.v1.WorkspaceService/"
_C = "/fenlo.v1.ConversationService/"
_CHAT = "/fenlo.v1.ChatService/"
_K = "/fenlo.v1.KnowledgeService/"
_E = "/fenlo.v1.EventService/"
_L = "/fenlo.v1.LeadService/"
_A = "/fenlo.v1.AnalyticsService/"
_WH = "/fenlo.v1.WebhookService/"

# Method -> workspace roles allowed (platform_admin is always allowed).
RPC_ROLES: dict[str, frozenset[str]] = {
    _W + "CreateWorkspace": PLATFORM_ONLY,
    _W + "GetWorkspace": ANY_ROLE,
    _W + "ListWorkspaces": ANY_ROLE,
    _W + "UpdateWorkspace": ADMIN_ONLY,
    _W + "DeleteWorkspace": ADMIN_ONLY,
    _W + "CreateApiKey": ADMIN_ONLY,
    _W + "ListApiKeys": ADMIN_ONLY,
    _W + "DeleteApiKey": ADMIN_ONLY,
    _C + "CreateConversation": STAFF,
    _C + "GetConversation": STAFF,
    _C + "ListConversations": STAFF,
    _C + "UpdateConversation": STAFF,
    _C + "DeleteConversation": ADMIN_ONLY,
    _C + "ListMessages": STAFF,
    _C + "PostAgentMessage": frozenset({ADMIN, AGENT}),
    _C + "EraseContact": ADMIN_ONLY,
    _C + "ExportConversations": ADMIN_ONLY,
    _CHAT + "Chat": STAFF,
    _K + "UploadDocument": ADMIN_ONLY,
    _K + "ImportText": ADMIN_ONLY,
    _K + "GetDocument": STAFF,
    _K + "ListDocuments": STAFF,
    _K + "DeleteDocument": ADMIN_ONLY,
    _K + "ReindexDocument": ADMIN_ONLY,
    _K + "SearchKnowledge": STAFF,
    _K + "CreateCuratedAnswer": ADMIN_ONLY,
    _K + "GetCuratedAnswer": STAFF,
    _K + "ListCuratedAnswers": STAFF,
    _K + "UpdateCuratedAnswer": ADMIN_ONLY,
    _K + "DeleteCuratedAnswer": ADMIN_ONLY,
    # A workspace-wide integration feed: for the workspace's own services and its
    # admins, not for agents (who work through conversations).
    _E + "StreamEvents": frozenset({ADMIN, SERVICE}),
    _L + "ListLeads": STAFF,
    _L + "GetLead": STAFF,
    _L + "UpdateLead": frozenset({ADMIN, AGENT}),
    _A + "GetWorkspaceStats": frozenset({ADMIN, SERVICE}),
    _WH + "CreateWebhook": ADMIN_ONLY,
    _WH + "GetWebhook": ADMIN_ONLY,
    _WH + "ListWebhooks": ADMIN_ONLY,
    _WH + "UpdateWebhook": ADMIN_ONLY,
    _WH + "DeleteWebhook": ADMIN_ONLY,
    _WH + "ListDeliveries": ADMIN_ONLY,
}

# Field paths of an update that only a platform admin may change.
PLATFORM_ONLY_FIELDS = {_W + "UpdateWorkspace": ("quotas",)}

# Methods that answer without credentials.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Streaming methods that count against a workspace's concurrent-stream quota.
STREAM_LIMITED = frozenset({_CHAT + "Chat"})


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def allowed(method: str, roles: frozenset[str]) -> bool:
    """Whether a principal with ``roles`` may call ``method``."""
    if PLATFORM_ADMIN in roles:
        return True
    permitted = RPC_ROLES.get(method)
    return permitted is not None and not permitted.isdisjoint(roles)


def table_markdown() -> str:
    """The table as published in docs/authentication.md."""
    lines = ["| RPC | roles |", "|---|---|"]
    for method, roles in RPC_ROLES.items():
        names = [*sorted(roles), PLATFORM_ADMIN]
        lines.append(f"| `{method.lstrip('/')}` | {', '.join(names)} |")
    return "\n".join(lines)
