"""Hostile input over every request message, generated from the contract.

For every RPC of every ``fenlo.v1`` service that the server serves (the
bidirectional Chat stream excepted: its abuse has tests of its own), hypothesis
draws request messages from the request's descriptor, recursively: strings that
are empty, far over every documented limit, or full of unicode edge cases (NUL,
control characters, RTL marks, combining marks, astral emoji, the replacement
character, zero-width characters, mixed scripts, path traversal and SQL-ish
text); resource names of the caller's own workspace, of another workspace, with
the wrong collection, extra segments, empty ids, ids with slashes,
percent-encoding or unicode; ints at zero, negative, huge and at the int32/int64
bounds; page sizes and page tokens (garbage, base64 garbage, tampered real
tokens, tokens of another query or workspace); field masks (unknown, empty,
duplicated, nested nonsense, ``*``); every enum value, UNSPECIFIED and unknown
numbers; repeated and map fields with many entries; oneofs; nested messages;
out-of-range Timestamps; Structs with deep nesting and NaN; garbage bytes.
Nothing here knows a field by hand except a few hints of plausible values (an
event type, a step name) that let examples get past the first check.

Each request is sent through a real channel to a real in-process server on
SQLite (and PostgreSQL when FENLO_TEST_DATABASE_URL is set) by a real caller: an
admin of a seeded workspace, or a platform admin for the RPCs an admin may not
call. The answer must be a result or a clear client error (``check_outcome``):

* the status is OK or one of ``CLIENT_ERRORS``: never INTERNAL, UNKNOWN,
  DATA_LOSS, UNAUTHENTICATED, UNAVAILABLE or UNIMPLEMENTED;
* every error carries a ``google.rpc.Status`` with exactly one ``ErrorInfo`` of
  domain ``fenlo.ai``; an INVALID_ARGUMENT also carries ``BadRequest`` field
  violations, each with a description and a path that names a field of the
  request;
* no response carries the marker of the other workspace's data;
* the server still answers (health and an authenticated call) after every
  example.

Server-streaming RPCs are read for a bounded number of responses, or until they
stay quiet for a moment (a live StreamEvents call); client-streaming ones
(UploadDocument) get a short generated sequence of parts, never large content.

Profiles (``FENLO_HYPOTHESIS_PROFILE``):

* ``ci`` (the default, what ``make test`` runs): a few examples per RPC, the same
  ones every run (derandomized), so the file stays fast and deterministic;
* ``thorough``: many random examples per RPC, for hunting bugs::

      FENLO_HYPOTHESIS_PROFILE=thorough .venv/bin/pytest tests/security/test_hostile_input.py

A failure prints the smallest request hypothesis found; when you fix the
server, add that request to ``REGRESSIONS``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import math
import os
import pkgutil
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import (
    descriptor,
    duration_pb2,
    field_mask_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.message import DecodeError, Message
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, Phase, event, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

import fenlo.v1
from fenlo.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    chat_pb2,
    conversation_pb2,
    event_pb2,
    knowledge_pb2,
    knowledge_pb2_grpc,
    lead_pb2,
    lead_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
    workspace_pb2,
)
from fenlo_server.app import FenloApp
from fenlo_server.auth.permissions import RPC_ROLES
from fenlo_server.errors import InvalidArgument, Reason, Unauthenticated, invalid
from fenlo_server.events import types as event_types
from fenlo_server.interceptors.errors import ErrorInterceptor
from tests.chat_helpers import ChatStream
from tests.conftest import _sqlite_url, make_settings, start_app
from tests.helpers import Api, rich_error

pytestmark = pytest.mark.asyncio(loop_scope="module")

FD = descriptor.FieldDescriptor
Metadata = tuple[tuple[str, str], ...]

# ---------------------------------------------------------------- profiles

PROFILE = os.environ.get("FENLO_HYPOTHESIS_PROFILE", "ci")
# Examples per RPC on SQLite and on PostgreSQL (where mostly the storage of odd
# values differs), and whether they are the same every run.
_PROFILES = {"ci": (10, 4, True), "thorough": (250, 100, False)}
if PROFILE not in _PROFILES:
    raise RuntimeError(f"FENLO_HYPOTHESIS_PROFILE must be one of {sorted(_PROFILES)}")
_SQLITE_EXAMPLES, _PG_EXAMPLES, _DERANDOMIZE = _PROFILES[PROFILE]
_COMMON = settings(
    derandomize=_DERANDOMIZE,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)
HOSTILE = settings(_COMMON, max_examples=_SQLITE_EXAMPLES)
HOSTILE_PG = settings(_COMMON, max_examples=_PG_EXAMPLES)

# ---------------------------------------------------------------- the contract

# Not fuzzed here, and why. A new RPC lands in the fuzz by itself; a new
# bidirectional one fails test_the_fuzz_covers_every_rpc until it is decided.
NOT_FUZZED = {
    "/fenlo.v1.ChatService/Chat": "bidirectional stream: the Chat stream abuse tests",
}

# Resource types the contract references without a `google.api.resource`
# descriptor; test_every_resource_reference_has_a_pattern keeps this exact.
UNDECLARED_PATTERNS = {"fenlo.ai/Lead": "workspaces/{workspace}/leads/{lead}"}
UNDECLARED_MESSAGES = {"fenlo.v1.Lead": "fenlo.ai/Lead"}


def contract_modules() -> list[Any]:
    modules = []
    for info in pkgutil.iter_modules(fenlo.v1.__path__):
        if info.name.endswith("_pb2"):
            modules.append(importlib.import_module(f"fenlo.v1.{info.name}"))
    return modules


def contract_methods() -> dict[str, descriptor.MethodDescriptor]:
    """Every RPC of every service of every fenlo.v1 proto module, by its path."""
    methods = {}
    for module in contract_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = method
    return methods


def declared_patterns() -> dict[str, str]:
    """Resource type -> name pattern, from the messages' `google.api.resource`."""
    patterns = {}
    for module in contract_modules():
        for message in module.DESCRIPTOR.message_types_by_name.values():
            options = message.GetOptions()
            if options.HasExtension(resource_pb2.resource):
                resource = options.Extensions[resource_pb2.resource]
                patterns[resource.type] = resource.pattern[0]
    return patterns


def resource_type_of(message: descriptor.Descriptor) -> str | None:
    options = message.GetOptions()
    if options.HasExtension(resource_pb2.resource):
        return str(options.Extensions[resource_pb2.resource].type)
    return UNDECLARED_MESSAGES.get(message.full_name)


PATTERNS = {**UNDECLARED_PATTERNS, **declared_patterns()}
METHODS = contract_methods()
FUZZED = sorted(path for path in METHODS if path not in NOT_FUZZED)
COLLECTIONS = sorted(
    {part for pattern in PATTERNS.values() for part in pattern.split("/") if "{" not in part}
)


def name_pattern(field: descriptor.FieldDescriptor) -> str | None:
    """The resource-name pattern a string field holds, if it holds one."""
    options = field.GetOptions()
    if options.HasExtension(resource_pb2.resource_reference):
        reference = options.Extensions[resource_pb2.resource_reference]
        if reference.type:
            return PATTERNS[reference.type]
        child = PATTERNS[reference.child_type].split("/")
        return "/".join(child[:-2])
    behaviors = options.Extensions[field_behavior_pb2.field_behavior]
    if field.name == "name" and field_behavior_pb2.IDENTIFIER in behaviors:
        kind = resource_type_of(field.containing_type)
        return PATTERNS[kind] if kind else None
    return None


def message_class(message: descriptor.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(message)


# ---------------------------------------------------------------- the world


@dataclass
class Workspace:
    """A seeded workspace: its admin's metadata, names and page tokens."""

    id: str
    md: Metadata
    ids: dict[str, list[str]] = field(default_factory=dict)
    page_tokens: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"workspaces/{self.id}"

    def add(self, kind: str, resource_name: str) -> None:
        self.ids.setdefault(kind, []).append(resource_name.rsplit("/", 1)[1])


HIGH_QUOTAS = workspace_pb2.WorkspaceQuotas(
    requests_per_minute=1_000_000_000,
    turns_per_minute=1_000_000_000,
    concurrent_chat_streams=1000,
)
HOOK_URL = "http://127.0.0.1:9/fenlo-hostile"  # the discard port: nothing listens


async def seed_document(api: Api, ws: Workspace, marker: str) -> None:
    document = await knowledge_pb2_grpc.KnowledgeServiceStub(api.channel).ImportText(
        knowledge_pb2.ImportTextRequest(
            parent=ws.name,
            document=knowledge_pb2.Document(title=f"Guide {marker}", tags=["guide"]),
            text=f"# Opening hours\n\nWe open at nine every day. {marker}\n",
        ),
        metadata=ws.md,
    )
    ws.add("document", document.name)


async def seed_curated_answer(api: Api, ws: Workspace, marker: str) -> None:
    answer = await knowledge_pb2_grpc.KnowledgeServiceStub(api.channel).CreateCuratedAnswer(
        knowledge_pb2.CreateCuratedAnswerRequest(
            parent=ws.name,
            curated_answer=knowledge_pb2.CuratedAnswer(
                question="When do you open?", answer=f"At nine. {marker}", tags=["guide"]
            ),
        ),
        metadata=ws.md,
    )
    ws.add("curated_answer", answer.name)


async def seed_webhook(api: Api, ws: Workspace, marker: str) -> None:
    hook = await webhook_pb2_grpc.WebhookServiceStub(api.channel).CreateWebhook(
        webhook_pb2.CreateWebhookRequest(
            parent=ws.name,
            webhook=webhook_pb2.Webhook(url=HOOK_URL, enabled=False, description=marker),
        ),
        metadata=ws.md,
    )
    ws.add("webhook", hook.webhook.name)


async def seed_api_key(api: Api, ws: Workspace, marker: str) -> None:
    key = await api.workspaces.CreateApiKey(
        workspace_pb2.CreateApiKeyRequest(
            parent=ws.name, api_key=workspace_pb2.ApiKey(display_name=marker)
        ),
        metadata=ws.md,
    )
    ws.add("api_key", key.api_key.name)


# What a successful Delete of one resource takes away, and how to put one back;
# any other destruction (a workspace, a conversation with its messages and lead,
# an erased contact) seeds the caller's workspace anew.
RESEED = {
    "document": seed_document,
    "curated_answer": seed_curated_answer,
    "webhook": seed_webhook,
    "api_key": seed_api_key,
}


async def seed_workspace(api: Api, label: str, marker: str, *, with_lead: bool) -> Workspace:
    """A workspace with a little of everything, every text carrying ``marker``."""
    workspace_id, token = await api.create_workspace(f"{label} {marker}", quotas=HIGH_QUOTAS)
    ws = Workspace(workspace_id, api.md(token))
    ws.ids["workspace"] = [workspace_id]
    md = ws.md
    conversations = []
    for channel, state in (
        (conversation_pb2.CHANNEL_WEB, conversation_pb2.CONVERSATION_STATE_OPEN),
        (conversation_pb2.CHANNEL_PHONE, conversation_pb2.CONVERSATION_STATE_CLOSED),
    ):
        conversation = await api.conversations.CreateConversation(
            conversation_pb2.CreateConversationRequest(
                parent=ws.name,
                conversation=conversation_pb2.Conversation(
                    channel=channel,
                    state=state,
                    external_contact_id=f"contact-{marker}",
                    metadata={"note": marker},
                ),
            ),
            metadata=md,
        )
        conversations.append(conversation.name)
        ws.add("conversation", conversation.name)
    for text in (f"Hello {marker}", f"Still here {marker}"):
        message = await api.conversations.PostAgentMessage(
            conversation_pb2.PostAgentMessageRequest(parent=conversations[0], text=text),
            metadata=md,
        )
        ws.add("message", message.name)
    for seed in RESEED.values():
        await seed(api, ws, marker)
    if with_lead:
        chat = ChatStream(api, token)
        await chat.start(parent=ws.name)
        await chat.say(f"How much is the premium plan? Write to ana@example.com {marker}")
        await chat.turn()
        await chat.send(end=chat_pb2.EndChat())
        await chat.rest()
        page = await lead_pb2_grpc.LeadServiceStub(api.channel).ListLeads(
            lead_pb2.ListLeadsRequest(parent=ws.name), metadata=md
        )
        for lead in page.leads:
            ws.add("lead", lead.name)
    # Real page tokens, each bound to its own query.
    listed = await api.conversations.ListConversations(
        conversation_pb2.ListConversationsRequest(parent=ws.name, page_size=1), metadata=md
    )
    messages = await api.conversations.ListMessages(
        conversation_pb2.ListMessagesRequest(parent=conversations[0], page_size=1), metadata=md
    )
    ws.page_tokens = [t for t in (listed.next_page_token, messages.next_page_token) if t]
    return ws


OWN_MARKER = "own"


class World:
    """The server, the caller's workspace (``own``) and another (``other``).

    Only ``own`` is ever changed by the fuzz (its admin calls everything but
    CreateWorkspace, which only adds); ``other``'s texts carry ``marker``.
    (Not a dataclass: hypothesis would print every field with each failure.)"""

    def __init__(
        self, app: FenloApp, api: Api, marker: str, own: Workspace, other: Workspace
    ) -> None:
        self.app, self.api, self.marker = app, api, marker
        self.own, self.other = own, other
        self.steps = sorted(app.steps.names())

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"World(own={self.own.name}, other={self.other.name})"

    @classmethod
    async def build(cls, app: FenloApp, api: Api) -> World:
        marker = "zq" + uuid.uuid4().hex[:16]
        other = await seed_workspace(api, "Other", marker, with_lead=False)
        own = await seed_workspace(api, "Own", OWN_MARKER, with_lead=True)
        return cls(app, api, marker, own, other)

    async def after_success(
        self, method: descriptor.MethodDescriptor, request: Any, response: Any
    ) -> None:
        """Put back what a successful destructive call took from ``own``."""
        if method.name == "EraseContact" and not response.conversations_deleted:
            return
        if not method.name.startswith(("Delete", "Erase")):
            return
        kind = _deleted_kind(method)
        if kind in RESEED:
            deleted = request.name.rsplit("/", 1)[1]
            self.own.ids[kind] = [i for i in self.own.ids[kind] if i != deleted]
            await RESEED[kind](self.api, self.own, OWN_MARKER)
        else:
            self.own = await seed_workspace(self.api, "Own", OWN_MARKER, with_lead=True)

    def caller(self, path: str) -> Metadata:
        """An admin of ``own``, or a platform admin where admins may not call."""
        if "admin" in RPC_ROLES[path]:
            return self.own.md
        return self.api.md(self.api.platform_token)

    def ids(self, kind: str) -> list[str]:
        return self.own.ids.get(kind, []) + self.other.ids.get(kind, [])


def _deleted_kind(method: descriptor.MethodDescriptor) -> str | None:
    """The kind of resource a Delete method's ``name`` names (``document``)."""
    field = method.input_type.fields_by_name.get("name")
    pattern = name_pattern(field) if field is not None else None
    return pattern.rsplit("/", 1)[1].strip("{}") if pattern else None


@contextlib.asynccontextmanager
async def world_on(database_url: str, tmp: Path) -> AsyncIterator[World]:
    settings_ = make_settings(
        tmp,
        database_url,
        # Webhooks the fuzz creates may only reach the discard port on loopback.
        webhook_allow_private=True,
        webhook_max_attempts=1,
    )
    app = await start_app(settings_)
    try:
        async with Api(app) as api:
            yield await World.build(app, api)
    finally:
        await app.stop(grace=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """A server on SQLite with a seeded world, for the whole module."""
    tmp = tmp_path_factory.mktemp("hostile")
    async with world_on(_sqlite_url(sqlite_template, tmp / "db"), tmp) as seeded:
        yield seeded


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pg_world(
    postgres_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """The same on PostgreSQL (FENLO_TEST_DATABASE_URL)."""
    if postgres_url is None:
        pytest.skip("PostgreSQL tests need FENLO_TEST_DATABASE_URL")
    async with world_on(postgres_url, tmp_path_factory.mktemp("hostile-pg")) as seeded:
        yield seeded


@pytest.fixture(params=["sqlite", "postgresql"])
def any_world(request: pytest.FixtureRequest) -> World:
    world: World = request.getfixturevalue("world" if request.param == "sqlite" else "pg_world")
    return world


# ---------------------------------------------------------------- strategies

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices`` (weight, strategy), by weight (one_of draws evenly)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


EDGE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\x1b[2J\x07",
    "\x7f\x85",
    "\u202eevil\u202c",  # right-to-left override
    "\u200f\u200e",  # RTL and LTR marks
    "\u200b\u200c\u200d\u2060",  # zero-width characters
    "\ufeff",
    "e\u0301\u0301\u0301",  # combining marks
    "Z\u0336\u0321\u0327\u031b\u0317a\u0337l\u0334g\u0335o",
    "😀👩‍👩‍👧‍👦🏳️‍🌈",
    "𝕳𝖊𝖑𝖑𝖔 \U0001f600 \U0010ffff",
    "\ufffd\ufffe\uffff",
    "Ｗｏｒｋｓｐａｃｅ",  # full-width
    "İı ß ǅ ﬃ",  # case-mapping traps
    "English Русский العربية 中文 עברית हिन्दी",
    "../../../../etc/passwd",
    "..\\..\\windows\\system32",
    "%2e%2e%2f%2e%2e%2f",
    "%00%0a%ff",
    "'; DROP TABLE conversations; --",
    '" OR 1=1 --',
    "' OR ''='",
    "%s%s%n%x",
    "{{7*7}} ${7*7} #{7*7}",
    "${jndi:ldap://127.0.0.1/a}",
    "<script>alert(1)</script>",
    "null",
    "NaN",
    "-1",
    "9" * 400,
    "*",
    "workspaces/",
    "\\",
    "/",
]
LONG_UNITS = ["a", "é", "😀", "\x00", "\u200b", "ab-", "word "]
LONG_LENGTHS = [65, 101, 201, 257, 301, 1001, 2001, 2049, 8001, 10001, 20001, 100_001]


def _long(unit: str, length: int) -> str:
    # Runs of spaced words are kept shorter: documents made of them cost the
    # background indexer real time.
    if " " in unit:
        length = min(length, 8001)
    return (unit * (length // len(unit) + 1))[:length]


PLAIN_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
PLAUSIBLE_TEXT = st.text("abcdefghijklmnopqrstuvwxyz ABC-0123456789", min_size=1, max_size=30)
HOSTILE_TEXT = weighted(
    (3, PLAUSIBLE_TEXT),
    (2, st.sampled_from(EDGE_STRINGS)),
    (1, PLAIN_TEXT),
    (1, st.builds(_long, st.sampled_from(LONG_UNITS), st.sampled_from(LONG_LENGTHS))),
)
SHORT_TEXT = st.one_of(st.sampled_from(EDGE_STRINGS[:20]), PLAIN_TEXT)


def ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [0, 1, -1, 2, 5, 50, 64, 100, 1000, 1001, 36500, 36501, 2**31 - 1, -(2**31)]
    edges += [2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**32 - 1, 2**64 - 1]
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high)
    )


PAGE_SIZES = st.one_of(
    st.sampled_from([-(2**31), -1, 0, 1, 2, 1000, 1001, 2**31 - 1]), ints(*INT32)
)
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, -1.0, 100.0, 100.0001, 1e308, -1e308, 5e-324, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True),
)
BYTES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b"\x00" * 1024,
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>",
            b"PK\x03\x04\x14\x00\x00\x00garbage",
            "caf\u00e9".encode("utf-16"),
            b"\xff\xfe\xfd\xfc",
            b"<html><script>alert(1)</script></html>",
        ]
    ),
    st.builds(
        lambda unit, n: unit * n, st.binary(min_size=1, max_size=4), st.sampled_from([4096, 65536])
    ),
)
TIMESTAMP_SECONDS = weighted(
    (2, st.integers(1_500_000_000, 2_000_000_000)),  # these years
    (1, st.integers(-62135596800, 253402300799)),  # the whole valid range, 0001 to 9999
    (
        2,
        st.sampled_from(
            [0, -1, -62135596800, -62135596801, 253402300799, 253402300800, *INT64, 1 << 40]
        ),
    ),
    (1, st.integers(*INT64)),
)
NANOS = weighted(
    (3, st.integers(0, 999_999_999)),
    (1, st.sampled_from([0, 999_999_999, 1_000_000_000, -1, *INT32])),
    (1, st.integers(*INT32)),
)

# Plausible values for fields whose valid values are a small language of their
# own: without them almost no example would get past the first check.
HINTS: dict[str, list[str]] = {
    "types": list(event_types.TYPES),
    "event_types": list(event_types.TYPES),
    "order_by": ["score desc", "update_time desc", "create_time desc", "score asc", "score,id"],
    "language": ["en", "pt-BR", "zh-Hant-TW", "en-", "x"],
    "time_zone": ["Europe/Lisbon", "UTC", "America/Argentina/Buenos_Aires", "../../etc/passwd"],
    "open_time": ["09:00", "00:00", "23:59", "24:00", "9:00", "09:60"],
    "close_time": ["17:30", "23:59", "08:00", "25:00"],
    "mime_type": ["text/plain", "text/markdown", "text/html", "application/pdf", "image/png"],
    "email": ["ana@example.com", "a@b", "@example.com", "ana@@example.com"],
    "contact_email": ["ana@example.com", "ANA@EXAMPLE.COM", "nobody@example.com"],
    "external_contact_id": ["contact-own", "contact-1"],
    "url": [HOOK_URL, "https://[::1]:9/x", "http://localhost:9/", "ftp://127.0.0.1/"],
    "source_uri": ["https://example.com/guide.pdf", "file:///etc/passwd", "guide.md"],
    "secret": ["whsec_" + "s" * 30, "s" * 24, "s" * 257, "with space " * 3],
}
URL_GARBAGE = [
    "http://",
    "https://user:pass@127.0.0.1:9/",
    "http://127.0.0.1:99999/",
    "http://[::1/",
    "https://%00/",
    "http://exa mple.invalid/",
    "https://fenlo-hostile.invalid/hook",
    "javascript:alert(1)",
    "http://0x7f000001:9/",
    "http://" + "a" * 3000 + ".invalid/",
]


def request_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.uuids().map(lambda u: "{" + str(u) + "}"),
        st.uuids().map(lambda u: f"urn:uuid:{u}"),
        st.uuids().map(lambda u: u.hex),
        SHORT_TEXT,
    )


def timestamps() -> st.SearchStrategy[Message]:
    return st.builds(
        lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), TIMESTAMP_SECONDS, NANOS
    )


def durations() -> st.SearchStrategy[Message]:
    return st.builds(
        lambda s, n: duration_pb2.Duration(seconds=s, nanos=n),
        st.one_of(st.sampled_from([0, -1, 315_576_000_001]), st.integers(*INT64)),
        NANOS,
    )


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), FLOATS, SHORT_TEXT, st.sampled_from(["x" * 20000, 1e300])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(SHORT_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def structs() -> st.SearchStrategy[Message]:
    return st.builds(
        _struct,
        st.one_of(
            st.dictionaries(SHORT_TEXT, JSON_VALUES, max_size=5),
            st.sampled_from([40, 90]).map(lambda d: {"nested": _nested(d)}),
            st.just({f"k{i}": i for i in range(300)}),
        ),
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper(token: str, at: int) -> str:
    if not token:
        return token
    at %= len(token)
    swapped = "A" if token[at] != "A" else "B"
    return token[:at] + swapped + token[at + 1 :]


class Generator:
    """Strategies for request messages, derived from their descriptors."""

    def __init__(self, world: World) -> None:
        self.world = world

    def request(self, method: descriptor.MethodDescriptor) -> st.SearchStrategy[Any]:
        single = self.message(method.input_type, 0)
        if not method.client_streaming:
            return single
        parts = st.lists(single, max_size=4)
        oneofs = [o for o in method.input_type.oneofs if not _synthetic(o)]
        if len(oneofs) != 1 or len(oneofs[0].fields) < 2:
            return parts
        # A stream of a oneof (UploadDocument): mostly the header, its first member,
        # then parts of the others, so that examples get past the order check.
        head, *rest = [f.name for f in oneofs[0].fields]
        header = self.message(method.input_type, 0, only=head)
        body = st.sampled_from(rest).flatmap(
            lambda name: self.message(method.input_type, 0, only=name)
        )
        ordered = st.builds(lambda h, b: [h, *b], header, st.lists(body, max_size=3))
        return weighted((3, ordered), (1, parts))

    def message(
        self,
        message: descriptor.Descriptor,
        depth: int,
        *,
        small: bool = False,
        only: str | None = None,
    ) -> st.SearchStrategy[Any]:
        """A message; a ``small`` one (an element repeated many times) has short
        texts and few entries, so a request stays a few MiB at most. With
        ``only``, that member of its oneof is the one set."""
        special = {
            "google.protobuf.Timestamp": timestamps,
            "google.protobuf.Duration": durations,
            "google.protobuf.Struct": structs,
        }.get(message.full_name)
        if special is not None:
            return special()

        @st.composite
        def build(draw: Any) -> Message:
            result = message_class(message)()
            chosen = {}
            for oneof in message.oneofs:
                if only is not None and only in [f.name for f in oneof.fields]:
                    chosen[oneof.name] = only
                elif not _synthetic(oneof):
                    names = [None, *(f.name for f in oneof.fields)]
                    chosen[oneof.name] = draw(st.sampled_from(names))
            for f in message.fields:
                oneof = f.containing_oneof
                if oneof is not None and not _synthetic(oneof):
                    if chosen[oneof.name] != f.name:
                        continue
                elif not draw(_presence(f)):
                    continue
                if f.message_type is not None and depth >= 4 and not _is_map(f):
                    continue
                self._fill(draw, result, f, message, depth=depth, small=small)
            return result

        return build()

    def _size(self, draw: Any, small: bool, many: list[int]) -> int:
        if small:
            return int(draw(st.integers(0, 2)))
        return int(draw(weighted((4, st.integers(0, 3)), (1, st.sampled_from(many)))))

    def _fill(
        self,
        draw: Any,
        target: Message,
        f: descriptor.FieldDescriptor,
        owner: descriptor.Descriptor,
        *,
        depth: int,
        small: bool,
    ) -> None:
        if _is_map(f):
            key_field = f.message_type.fields_by_name["key"]
            value_field = f.message_type.fields_by_name["value"]
            size = self._size(draw, small, [64, 65, 300])
            short = small or size > 3
            keys = draw(
                st.lists(
                    self.scalar(key_field, owner, small=short),
                    min_size=size,
                    max_size=size,
                    unique=True,
                )
            )
            container = getattr(target, f.name)
            for key in keys:
                container[key] = draw(self.scalar(value_field, owner, small=short))
            return
        if f.is_repeated:
            size = self._size(draw, small, [21, 33, 51, 65, 1000])
            short = small or size > 3
            if f.message_type is not None:
                element = self.message(f.message_type, depth + 1, small=short)
                values = draw(st.lists(element, min_size=min(size, 3), max_size=min(size, 3)))
                values = (values * size)[:size]  # many entries: copies of a few
                for value in values:
                    getattr(target, f.name).add().CopyFrom(value)
            else:
                values = draw(
                    st.lists(self.scalar(f, owner, small=short), min_size=size, max_size=size)
                )
                getattr(target, f.name).extend(values)
            return
        if f.message_type is not None:
            if f.message_type.full_name == "google.protobuf.FieldMask":
                getattr(target, f.name).paths.extend(draw(self.mask_paths(owner)))
            else:
                value = draw(self.message(f.message_type, depth + 1, small=small))
                getattr(target, f.name).CopyFrom(value)
            return
        setattr(target, f.name, draw(self.scalar(f, owner, small=small)))

    def scalar(
        self, f: descriptor.FieldDescriptor, owner: descriptor.Descriptor, *, small: bool = False
    ) -> st.SearchStrategy[Any]:
        kind = f.type
        if kind == FD.TYPE_STRING:
            return self.string(f, small=small)
        if kind == FD.TYPE_BYTES:
            return BYTES if not small else st.binary(max_size=16)
        if kind == FD.TYPE_BOOL:
            return st.booleans()
        if kind == FD.TYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            return weighted(
                (3, st.sampled_from(known)),
                (1, st.sampled_from([max(known) + 1, -1, *INT32])),
                (1, ints(*INT32)),
            )
        if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return FLOATS if kind == FD.TYPE_DOUBLE else st.floats(width=32)
        if kind in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
            return PAGE_SIZES if f.name == "page_size" else ints(*INT32)
        if kind in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
            return ints(*INT64)
        if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
            return ints(0, 2**32 - 1)
        if kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
            return ints(0, 2**64 - 1)
        raise AssertionError(f"no strategy for {f.full_name} (type {kind})")

    def string(
        self, f: descriptor.FieldDescriptor, *, small: bool = False
    ) -> st.SearchStrategy[str]:
        text = SHORT_TEXT if small else HOSTILE_TEXT
        pattern = name_pattern(f)
        if pattern is not None:
            return self.resource_name(pattern)
        if f.name == "page_token":
            return self.page_token()
        if f.name == "request_id":
            return request_ids()
        hints = list(HINTS.get(f.name, []))
        if f.name == "name" and f.containing_type.full_name == "fenlo.v1.PipelineStep":
            hints += self.world.steps
        if "url" in f.name:
            hints += URL_GARBAGE
        if hints:
            return weighted((1, st.sampled_from(hints)), (1, text))
        return text

    # Resource names

    def resource_id(self, kind: str) -> st.SearchStrategy[str]:
        known = self.world.ids(kind)
        options = [
            st.from_regex(r"[0-9a-z][0-9a-z-]{0,62}", fullmatch=True),
            st.sampled_from(
                [
                    "",
                    "-x",
                    "A",
                    "x" * 64,
                    "a/b",
                    "a%2Fb",
                    "%00",
                    "ü",
                    "..",
                    ".",
                    " x",
                    "x\n",
                    "ｘ",
                    "*",
                    "-",
                ]
            ),
        ]
        if known:
            options.insert(0, st.sampled_from(known))
        return st.one_of(options)

    def own_name(self, pattern: str) -> st.SearchStrategy[str]:
        """A well-formed name in the caller's workspace: of a seeded resource when
        there is one, else of one that does not exist."""
        segments = pattern.split("/")

        @st.composite
        def build(draw: Any) -> str:
            parts = []
            for segment in segments:
                kind = segment[1:-1]
                if not segment.startswith("{"):
                    parts.append(segment)
                elif kind == "workspace":
                    parts.append(self.world.own.id)
                elif self.world.own.ids.get(kind):
                    parts.append(draw(st.sampled_from(self.world.own.ids[kind])))
                else:
                    parts.append(draw(st.from_regex(r"[0-9a-z]{1,26}", fullmatch=True)))
            return "/".join(parts)

        return build()

    def resource_name(self, pattern: str) -> st.SearchStrategy[str]:
        """Mostly the caller's own names (to get past the first check), else
        hostile ones: other workspaces, wrong shapes, raw text."""
        return weighted(
            (6, self.own_name(pattern)), (3, self.hostile_name(pattern)), (1, HOSTILE_TEXT)
        )

    def hostile_name(self, pattern: str) -> st.SearchStrategy[str]:
        segments = pattern.split("/")

        @st.composite
        def build(draw: Any) -> str:
            parts = [draw(self.resource_id(s[1:-1])) if s.startswith("{") else s for s in segments]
            name = "/".join(parts)
            mutation = draw(st.sampled_from(list(MUTATIONS)))
            if mutation == "other-collection":
                collections = [i for i, s in enumerate(segments) if "{" not in s]
                at = draw(st.sampled_from(collections))
                parts[at] = draw(st.sampled_from(COLLECTIONS))
                return "/".join(parts)
            if mutation == "other-kind":
                other = draw(st.sampled_from(sorted(PATTERNS.values())))
                return draw(self.hostile_name(other)) if other != pattern else name
            return MUTATIONS[mutation](name)

        return build()

    # Page tokens and masks

    def page_token(self) -> st.SearchStrategy[str]:
        real = self.world.own.page_tokens + self.world.other.page_tokens
        forged = st.builds(
            lambda body, sig: f"{_b64(json.dumps(body).encode())}.{_b64(sig)}",
            st.fixed_dictionaries(
                {
                    "s": st.just(f"ws:{self.world.own.id}"),
                    "q": SHORT_TEXT,
                    "c": JSON_VALUES,
                    "t": ints(*INT64),
                }
            ),
            st.binary(min_size=20, max_size=20),
        )
        options = [
            SHORT_TEXT,
            st.binary(max_size=64).map(_b64),
            st.builds(
                lambda a, b: f"{_b64(a)}.{_b64(b)}", st.binary(max_size=64), st.binary(max_size=32)
            ),
            forged,
            st.sampled_from(["A" * 100_000 + "." + "B" * 27, ".", "..", "a.b.c", "====.===="]),
        ]
        if real:
            options.append(st.sampled_from(real))
            options.append(st.builds(_tamper, st.sampled_from(real), st.integers(0, 10_000)))
            options.append(st.sampled_from(real).map(lambda t: t + "="))
        return weighted((1, st.just("")), (1, st.one_of(options)))

    def mask_paths(self, owner: descriptor.Descriptor) -> st.SearchStrategy[list[str]]:
        resource = next(
            (
                f.message_type
                for f in owner.fields
                if f.message_type is not None
                and not f.message_type.full_name.startswith("google.protobuf.")
            ),
            None,
        )
        candidates = ["*", "", ".", "..", "nope", "a.b.c", "name", "*.*", "update_mask"]
        if resource is not None:
            for f in resource.fields:
                candidates += [f.name, f"{f.name}.", f".{f.name}", f.name.upper(), f"{f.name}.nope"]
                if f.message_type is not None and not _is_map(f):
                    candidates += [f"{f.name}.{g.name}" for g in f.message_type.fields]
                    candidates += [
                        f"{f.name}.{g.name}.{h.name}"
                        for g in f.message_type.fields
                        if g.message_type is not None
                        for h in g.message_type.fields
                    ]
        path = st.one_of(st.sampled_from(candidates), SHORT_TEXT)
        plausible = [f.name for f in resource.fields] if resource is not None else ["name"]
        return weighted(
            (2, st.just([])),
            (3, st.lists(st.sampled_from(plausible), min_size=1, max_size=2, unique=True)),
            (2, st.lists(path, max_size=4)),
            (1, st.lists(path, min_size=1, max_size=2).map(lambda p: p + p)),  # duplicated
            (1, st.just(candidates * 3)),
        )


MUTATIONS: dict[str, Callable[[str], str]] = {
    "as-is": lambda name: name,
    "as-is-again": lambda name: name,
    "extra-segment": lambda name: name + "/extra",
    "extra-segments": lambda name: name + "/messages/x/y",
    "trailing-slash": lambda name: name + "/",
    "leading-slash": lambda name: "/" + name,
    "double-slash": lambda name: name.replace("/", "//"),
    "drop-last": lambda name: name.rsplit("/", 1)[0],
    "upper": str.upper,
    "percent-encoded": lambda name: name.replace("/", "%2F"),
    "whitespace": lambda name: f" {name}\n",
    "nul": lambda name: name + "\x00",
    "unicode": lambda name: name.replace("s", "ѕ", 1),  # Cyrillic dze
    "url": lambda name: "https://fenlo.invalid/v1/" + name,
    "other-collection": lambda name: name,  # handled in resource_name
    "other-kind": lambda name: name,  # handled in resource_name
}


def _synthetic(oneof: descriptor.OneofDescriptor) -> bool:
    """A proto3 `optional` field's oneof (not a real choice)."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _is_map(f: descriptor.FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _presence(f: descriptor.FieldDescriptor) -> st.SearchStrategy[bool]:
    behaviors = f.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    if field_behavior_pb2.REQUIRED in behaviors or name_pattern(f) is not None:
        return st.sampled_from([True, True, True, False])
    return st.booleans()


# ---------------------------------------------------------------- calling


@dataclass
class Outcome:
    """What one call answered."""

    code: grpc.StatusCode
    responses: list[Message]
    error: aio.AioRpcError | None = None
    quiet: bool = False  # a stream still open and silent when we stopped reading


CALL_TIMEOUT = 30.0  # a call that takes longer is hung: DEADLINE_EXCEEDED fails the check
STREAM_MAX = 20  # responses read from a server stream
STREAM_FIRST_QUIET = 1.0  # seconds a live stream may stay silent before its first response
STREAM_NEXT_QUIET = 0.2  # ... and between responses


async def invoke(
    channel: aio.Channel, method: descriptor.MethodDescriptor, request: Any, md: Metadata
) -> Outcome:
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = message_class(method.input_type).SerializeToString
    deserialize = message_class(method.output_type).FromString
    kwargs: dict[str, Any] = {"request_serializer": serialize, "response_deserializer": deserialize}
    try:
        if method.client_streaming and not method.server_streaming:
            parts = list(request)

            async def stream() -> AsyncIterator[Any]:
                for part in parts:
                    yield part

            response = await channel.stream_unary(path, **kwargs)(
                stream(), metadata=md, timeout=CALL_TIMEOUT
            )
            return Outcome(grpc.StatusCode.OK, [response])
        if method.server_streaming:
            return await _read_stream(channel.unary_stream(path, **kwargs), request, md)
        response = await channel.unary_unary(path, **kwargs)(
            request, metadata=md, timeout=CALL_TIMEOUT
        )
        return Outcome(grpc.StatusCode.OK, [response])
    except aio.AioRpcError as error:
        return Outcome(error.code(), [], error)


async def _read_stream(stub: Any, request: Message, md: Metadata) -> Outcome:
    call = stub(request, metadata=md, timeout=CALL_TIMEOUT)
    responses: list[Message] = []
    try:
        while len(responses) < STREAM_MAX:
            quiet = STREAM_NEXT_QUIET if responses else STREAM_FIRST_QUIET
            try:
                response = await asyncio.wait_for(call.read(), quiet)
            except TimeoutError:
                return Outcome(grpc.StatusCode.OK, responses, quiet=True)
            if response is aio.EOF:
                break
            responses.append(response)
        return Outcome(grpc.StatusCode.OK, responses)
    except aio.AioRpcError as error:
        return Outcome(error.code(), responses, error)
    finally:
        call.cancel()


CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_INDEX = re.compile(r"\[(?:\d+|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def field_path_exists(message: descriptor.Descriptor, path: str) -> bool:
    """Whether a BadRequest field path (``a.b[0].c``, ``m['key']``) names a field."""
    current: descriptor.Descriptor | None = message
    for part in _INDEX.sub("", path).split("."):
        if current is None:
            return False
        if part in current.fields_by_name:
            f = current.fields_by_name[part]
            current = None if _is_map(f) else f.message_type
        elif part in current.oneofs_by_name:
            current = None
        else:
            return False
    return True


def outcome_label(outcome: Outcome) -> str:
    """The code and reason, for ``--hypothesis-show-statistics``."""
    if outcome.error is None:
        return "OK (quiet)" if outcome.quiet else "OK"
    keys = {key for key, _ in outcome.error.trailing_metadata() or ()}
    reason = rich_error(outcome.error).reason if "grpc-status-details-bin" in keys else ""
    return f"{outcome.code.name} {reason}".strip()


def decodes(method: descriptor.MethodDescriptor, request: Any) -> bool:
    """Whether a server can decode ``request`` at all (protobuf limits nesting
    to 100 levels, which a client does not check when it encodes)."""
    parse = message_class(method.input_type).FromString
    try:
        for part in request if method.client_streaming else [request]:
            parse(part.SerializeToString())
    except DecodeError:
        return False
    return True


def check_outcome(
    method: descriptor.MethodDescriptor,
    request: Any,
    outcome: Outcome,
    *,
    max_bytes: int,
    marker: str | None = None,
) -> None:
    """The property: a result, or a clear client error with its details."""
    parts = request if method.client_streaming else [request]
    if any(part.ByteSize() > max_bytes for part in parts):
        # gRPC refuses it before Fenlo sees it (FENLO_MAX_RECEIVE_MESSAGE_BYTES).
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.code
        return
    decodable = decodes(method, request)
    if not decodable and not method.client_streaming:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (
            f"an undecodable request got {outcome.code.name}"
        )
    if outcome.code == grpc.StatusCode.OK:
        if marker:
            for response in outcome.responses:
                assert marker.encode() not in response.SerializeToString(), (
                    f"a response carries the other workspace's data: {response}"
                )
        return
    assert outcome.error is not None
    details = outcome.error.details()
    assert outcome.code in CLIENT_ERRORS, f"{outcome.code.name}: {details}"
    error = rich_error(outcome.error)  # one ErrorInfo, and the code of the status
    assert error.domain == "fenlo.ai" and error.reason, error
    if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
        if not decodable and error.reason == "INVALID_ARGUMENT" and not error.violations:
            return  # the request as a whole: no field to name
        assert error.violations, f"INVALID_ARGUMENT without field violations: {error}"
        for path, description in error.violations:
            assert description, error
            assert field_path_exists(method.input_type, path), (
                f"violation names no field of {method.input_type.name}: {path!r}"
            )


async def server_answers(world: World) -> None:
    """The server is alive and still serves an authenticated call."""
    health = health_pb2_grpc.HealthStub(world.api.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await world.api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=world.own.name), metadata=world.own.md, timeout=10
    )


# ---------------------------------------------------------------- the property


async def hostile_request(world: World, path: str, data: st.DataObject) -> None:
    """One example: draw a request for ``path``, send it, check the answer."""
    method = METHODS[path]
    request = data.draw(Generator(world).request(method), label="request")
    md = world.caller(path)
    outcome = await invoke(world.api.channel, method, request, md)
    event(outcome_label(outcome))
    limit = world.app.settings.max_receive_message_bytes
    marker = None if md != world.own.md else world.marker  # a platform admin sees all
    check_outcome(method, request, outcome, max_bytes=limit, marker=marker)
    if outcome.code == grpc.StatusCode.OK and not method.server_streaming:
        await world.after_success(method, request, outcome.responses[0])
    await server_answers(world)


@pytest.mark.parametrize("path", FUZZED)
@HOSTILE
@given(data=st.data())
async def test_hostile_requests_get_a_result_or_a_clear_error(
    world: World, path: str, data: st.DataObject
) -> None:
    await hostile_request(world, path, data)


@pytest.mark.parametrize("path", FUZZED)
@HOSTILE_PG
@given(data=st.data())
async def test_hostile_requests_on_postgresql(
    pg_world: World, path: str, data: st.DataObject
) -> None:
    await hostile_request(pg_world, path, data)


# ---------------------------------------------------------------- undecodable bytes

PLACEHOLDER = "qzqzqzqz"


def _with_bad_utf8(message: descriptor.Descriptor) -> bytes | None:
    """A serialized ``message`` whose first reachable string is not UTF-8."""
    for f in message.fields:
        if f.is_repeated or _is_map(f):
            continue
        if f.type == FD.TYPE_STRING:
            value = message_class(message)()
            setattr(value, f.name, PLACEHOLDER)
        elif f.message_type is not None and not f.message_type.full_name.startswith("google."):
            inner = _with_bad_utf8(f.message_type)
            if inner is None:
                continue
            value = message_class(message)()
            getattr(value, f.name).MergeFromString(
                inner.replace(b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8", PLACEHOLDER.encode())
            )
        else:
            continue
        return value.SerializeToString().replace(
            PLACEHOLDER.encode(), b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"
        )
    return None


def undecodable_payloads(message: descriptor.Descriptor) -> list[bytes]:
    payloads = [b"\xff\xff\xff\xff", b"\x0a\x64ab"]  # a cut-off tag; a cut-off field
    bad_utf8 = _with_bad_utf8(message)
    if bad_utf8 is not None:
        payloads.append(bad_utf8)
    return payloads


async def send_raw(
    channel: aio.Channel, method: descriptor.MethodDescriptor, payload: bytes, md: Metadata
) -> None:
    """Send ``payload`` as the request (the only part of a client stream) and read
    the first response."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    if method.client_streaming:

        async def parts() -> AsyncIterator[bytes]:
            yield payload

        await channel.stream_unary(path, **raw)(parts(), metadata=md, timeout=10)
    elif method.server_streaming:
        await channel.unary_stream(path, **raw)(payload, metadata=md, timeout=10).read()
    else:
        await channel.unary_unary(path, **raw)(payload, metadata=md, timeout=10)


@pytest.mark.parametrize("path", FUZZED)
async def test_undecodable_requests_are_invalid_argument(world: World, path: str) -> None:
    """Bytes that are no message of the request's type: a cut-off tag, a cut-off
    field, a string that is not UTF-8. (What gRPC alone answers is UNKNOWN.)"""
    method = METHODS[path]
    for payload in undecodable_payloads(method.input_type):
        with pytest.raises(aio.AioRpcError) as caught:
            await send_raw(world.api.channel, method, payload, world.caller(path))
        error = rich_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert not error.violations, error
    await server_answers(world)


# ---------------------------------------------------------------- the walk covers everything


async def served_methods(channel: aio.Channel) -> set[str]:
    """Every fenlo.v1 RPC the running server serves, as its reflection service says."""
    from google.protobuf import descriptor_pb2

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(request: reflection_pb2.ServerReflectionRequest) -> Any:
        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield request

        async for response in stub.ServerReflectionInfo(requests(), timeout=10):
            return response
        raise AssertionError("the reflection service did not answer")

    listed = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
    methods = set()
    for service in listed.list_services_response.service:
        if not service.name.startswith("fenlo.v1."):
            continue
        found = await ask(
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=service.name)
        )
        for raw in found.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for declared in proto.service:
                if f"{proto.package}.{declared.name}" == service.name:
                    methods |= {f"/{service.name}/{m.name}" for m in declared.method}
    return methods


async def test_the_fuzz_covers_every_rpc(world: World) -> None:
    served = await served_methods(world.api.channel)
    assert served == set(METHODS), "the contract modules and the server disagree"
    assert set(FUZZED) == served - set(NOT_FUZZED)
    for path in NOT_FUZZED:  # only what the fuzz cannot drive is left out
        assert METHODS[path].client_streaming and METHODS[path].server_streaming, path
    for path in FUZZED:  # each has a caller that gets past the permission check
        assert world.caller(path)


async def test_every_resource_reference_has_a_pattern() -> None:
    referenced = set()
    for module in contract_modules():
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for f in message.fields:
                options = f.GetOptions()
                if options.HasExtension(resource_pb2.resource_reference):
                    reference = options.Extensions[resource_pb2.resource_reference]
                    referenced.add(reference.type or reference.child_type)
    assert referenced <= set(PATTERNS)
    assert not set(declared_patterns()) & set(UNDECLARED_PATTERNS), "declared now: drop it"
    assert set(UNDECLARED_PATTERNS) <= referenced
    assert set(UNDECLARED_MESSAGES.values()) == set(UNDECLARED_PATTERNS)


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@pytest.mark.parametrize("path", FUZZED)
async def test_the_generator_sets_every_field(world: World, path: str) -> None:
    """Each field of the request (for a stream, of some part) is set by some
    example, so no field is silently left out of the fuzz."""
    method = METHODS[path]
    strategy = Generator(world).request(method)
    quick = settings(max_examples=2000, database=None, deadline=None, phases=[Phase.generate])
    for f in method.input_type.fields:

        def sets(request: Any, f: descriptor.FieldDescriptor = f) -> bool:
            parts = request if method.client_streaming else [request]
            return any(_is_set(part, f) for part in parts)

        try:
            find(strategy, sets, settings=quick)
        except NoSuchExample:
            pytest.fail(f"no example of {path} sets {f.name}")


def _is_set(message: Message, f: descriptor.FieldDescriptor) -> bool:
    value = getattr(message, f.name)
    if f.is_repeated:  # maps too
        return len(value) > 0
    if f.message_type is not None or f.has_presence:
        return message.HasField(f.name)
    return bool(value != f.default_value)


# ---------------------------------------------------------------- the harness can fail

STATS = "/fenlo.v1.AnalyticsService/GetWorkspaceStats"


class BrokenAnalytics(analytics_pb2_grpc.AnalyticsServiceServicer):
    """Answers GetWorkspaceStats the ways a broken handler would."""

    def __init__(self, failure: str, marker: str) -> None:
        self.failure = failure
        self.marker = marker

    async def GetWorkspaceStats(
        self, request: analytics_pb2.GetWorkspaceStatsRequest, context: Any
    ) -> analytics_pb2.WorkspaceStats:
        if self.failure == "raises":  # what the year-1 end_time did: INTERNAL
            raise OverflowError("date value out of range")
        if self.failure == "bare-status":  # an error without google.rpc.Status
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")
        if self.failure == "no-violations":
            raise InvalidArgument(Reason.ERROR_REASON_INVALID_ARGUMENT, "bad")
        if self.failure == "wrong-field":
            raise invalid("start_time.nope", "bad")
        if self.failure == "unauthenticated":
            raise Unauthenticated(Reason.ERROR_REASON_CREDENTIALS_INVALID, "bad")
        assert self.failure == "leaks"
        return analytics_pb2.WorkspaceStats(workspace=f"workspaces/{self.marker}")


@pytest.mark.parametrize(
    "failure", ["raises", "bare-status", "no-violations", "wrong-field", "unauthenticated", "leaks"]
)
async def test_the_property_flags_a_broken_server(world: World, failure: str) -> None:
    """The same check, against a server whose handler is broken (behind Fenlo's
    own error interceptor), must fail; against Fenlo it passes."""
    method = METHODS[STATS]
    request = analytics_pb2.GetWorkspaceStatsRequest(workspace=world.own.name)
    limit = world.app.settings.max_receive_message_bytes
    real = await invoke(world.api.channel, method, request, world.own.md)
    check_outcome(method, request, real, max_bytes=limit, marker=world.marker)

    broken = aio.server(interceptors=[ErrorInterceptor()])
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
        BrokenAnalytics(failure, world.marker), broken
    )
    port = broken.add_insecure_port("127.0.0.1:0")
    await broken.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            outcome = await invoke(channel, method, request, ())
        with pytest.raises(AssertionError):
            check_outcome(method, request, outcome, max_bytes=limit, marker=world.marker)
    finally:
        await broken.stop(0)


# ---------------------------------------------------------------- regressions

# Requests the fuzz found that once broke the server, built for the world they
# run in: (label, RPC, build(world) -> request, expected code, expected fields).
Build = Callable[[World], Any]


def _stamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def _deep_request(depth: int) -> workspace_pb2.CreateWorkspaceRequest:
    request = workspace_pb2.CreateWorkspaceRequest(
        workspace=workspace_pb2.Workspace(display_name="deep")
    )
    # (CopyFrom: the constructor would copy it by parsing, which the depth refuses.)
    request.workspace.settings.pipeline.add(name="x").params.CopyFrom(
        _struct({"nested": _nested(depth)})
    )
    return request


YEAR_ONE = -62135596800
REGRESSIONS: list[tuple[str, str, Build, grpc.StatusCode, list[str]]] = [
    (
        # end - 30 days overflowed: INTERNAL
        "stats-ending-in-year-one",
        STATS,
        lambda w: analytics_pb2.GetWorkspaceStatsRequest(
            workspace=w.own.name, end_time=_stamp(YEAR_ONE + 10 * 86400)
        ),
        grpc.StatusCode.OK,
        [],
    ),
    (
        "stats-ending-at-the-first-instant",
        STATS,
        lambda w: analytics_pb2.GetWorkspaceStatsRequest(
            workspace=w.own.name, end_time=_stamp(YEAR_ONE)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["end_time"],
    ),
    (
        # a thousand violations made trailers of 100 KB: the client got a bare
        # RESOURCE_EXHAUSTED instead of the error
        "a-thousand-bad-roles",
        "/fenlo.v1.WorkspaceService/CreateApiKey",
        lambda w: workspace_pb2.CreateApiKeyRequest(
            parent=w.own.name, api_key=workspace_pb2.ApiKey(roles=[99] * 1000)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["api_key.roles[0]"],
    ),
    (
        "a-thousand-unknown-event-types",
        "/fenlo.v1.EventService/StreamEvents",
        lambda w: event_pb2.StreamEventsRequest(
            parent=w.own.name, types=["x" * 64 + str(i) for i in range(1000)]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["types"],
    ),
    (
        # a time zone longer than a file name: OSError from zoneinfo, INTERNAL
        "a-long-time-zone",
        "/fenlo.v1.WorkspaceService/UpdateWorkspace",
        lambda w: workspace_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                name=w.own.name,
                settings=workspace_pb2.WorkspaceSettings(
                    business_hours=workspace_pb2.BusinessHours(time_zone="a" * 300)
                ),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["settings.business_hours"]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["workspace.settings.business_hours.time_zone"],
    ),
    (
        # NaN in step parameters cannot be stored as JSON: INTERNAL
        "nan-in-step-params",
        "/fenlo.v1.WorkspaceService/UpdateWorkspace",
        lambda w: workspace_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                name=w.own.name,
                settings=workspace_pb2.WorkspaceSettings(
                    pipeline=[
                        workspace_pb2.PipelineStep(
                            name="rag_retrieval", params=_struct({"threshold": math.nan})
                        )
                    ]
                ),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["settings.pipeline"]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["workspace.settings.pipeline[0].params"],
    ),
    (
        # only the first 32 steps were validated, but all were turned into JSON
        "nan-in-the-33rd-step",
        "/fenlo.v1.WorkspaceService/CreateWorkspace",
        lambda w: workspace_pb2.CreateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                display_name="many steps",
                settings=workspace_pb2.WorkspaceSettings(
                    pipeline=[workspace_pb2.PipelineStep(name="rag_retrieval")] * 32
                    + [
                        workspace_pb2.PipelineStep(
                            name="rag_retrieval", params=_struct({"k": math.inf})
                        )
                    ]
                ),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["workspace.settings.pipeline"],
    ),
    (
        # nested past protobuf's limit of 100: gRPC answered UNKNOWN
        "struct-nested-too-deep",
        "/fenlo.v1.WorkspaceService/CreateWorkspace",
        lambda w: _deep_request(90),
        grpc.StatusCode.INVALID_ARGUMENT,
        [],
    ),
    (
        # the violation named `request_id`, which UploadDocumentRequest does not have
        "upload-with-a-bad-request-id",
        "/fenlo.v1.KnowledgeService/UploadDocument",
        lambda w: [
            knowledge_pb2.UploadDocumentRequest(
                metadata=knowledge_pb2.DocumentMetadata(parent=w.own.name, request_id="x")
            ),
            knowledge_pb2.UploadDocumentRequest(chunk=b"hello"),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        ["metadata.request_id"],
    ),
    (
        "upload-with-a-long-title",
        "/fenlo.v1.KnowledgeService/UploadDocument",
        lambda w: [
            knowledge_pb2.UploadDocumentRequest(
                metadata=knowledge_pb2.DocumentMetadata(
                    parent=w.own.name, document=knowledge_pb2.Document(title="t" * 301)
                )
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        ["metadata.document.title"],
    ),
]


@pytest.mark.parametrize(
    ("path", "build", "code", "fields"),
    [
        pytest.param(path, build, code, fields, id=label)
        for label, path, build, code, fields in REGRESSIONS
    ],
)
async def test_regressions(
    any_world: World, path: str, build: Build, code: grpc.StatusCode, fields: list[str]
) -> None:
    world = any_world
    method = METHODS[path]
    request = build(world)
    outcome = await invoke(world.api.channel, method, request, world.caller(path))
    limit = world.app.settings.max_receive_message_bytes
    check_outcome(method, request, outcome, max_bytes=limit, marker=world.marker)
    assert outcome.code == code, outcome
    if outcome.error is not None:
        error = rich_error(outcome.error)
        assert [f for f, _ in error.violations][: len(fields)] == fields, error
        trailers = sum(len(k) + len(v) for k, v in outcome.error.trailing_metadata() or ())
        assert trailers < 8192, trailers
    await server_answers(world)
