"""Authentication abuse beyond the matrix of tests/integration/test_auth.py.

What the server answers for headers (docs/authentication.md):

- a credential over 8 KiB in a request whose metadata fits in
  ``max_metadata_bytes`` (16 KiB): UNAUTHENTICATED / CREDENTIALS_INVALID;
- metadata over ``max_metadata_bytes``, by size or by count: gRPC itself
  answers RESOURCE_EXHAUSTED, before any handler (no rich status, no log line);
- more than one ``authorization`` header: UNAUTHENTICATED / CREDENTIALS_INVALID.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fenlo.v1 import workspace_pb2
from fenlo_server.auth.authenticator import MAX_CREDENTIAL_LENGTH
from tests.helpers import Api, RichError, rich_error
from tests.integration.test_auth import (
    INVALID,
    MISSING,
    JwtContext,
    create_key,
    jwt_context,
)

W = workspace_pb2
DENIED_WORKSPACE = "PERMISSION_DENIED_WORKSPACE"
DENIED_ROLE = "PERMISSION_DENIED_ROLE"

# ---------------------------------------------------------------- helpers


def padded_token(ctx: JwtContext, length: int) -> str:
    """A valid token of ``length`` characters, give or take 4 (an ignored claim
    pads it)."""
    pad = (length - len(ctx.sign(ctx.claims()))) * 3 // 4
    while len(token := ctx.sign(ctx.claims(note="x" * pad))) > length:
        pad -= (len(token) - length) * 3 // 4 + 1
    assert length - 4 <= len(token) <= length, len(token)
    return token


async def call_error(call: Any) -> RichError:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    return rich_error(info.value)


# ---------------------------------------------------------------- very long and very many headers

Md = list[tuple[str, str | bytes]]


async def answer(api: Api, workspace: str, md: Md) -> str:
    """``OK`` or ``CODE/REASON`` (no reason when gRPC answered by itself)."""
    try:
        await api.workspaces.GetWorkspace(
            W.GetWorkspaceRequest(name=f"workspaces/{workspace}"), metadata=md, timeout=10
        )
    except aio.AioRpcError as error:
        details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
        reason = rich_error(error).reason if details else ""
        return f"{error.code().name}/{reason}"
    return "OK"


def rpc_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fenlo.rpc"]


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records) + caplog.text


async def test_header_sizes_get_one_clear_answer_every_time(
    sqlite_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """gRPC refuses metadata between its soft and hard limits (8 and 16 KiB) at
    random, so a credential near our 8 KiB limit passed one time in a few and
    failed the next; the server now sets both to max_metadata_bytes."""
    caplog.set_level(logging.DEBUG, logger="fenlo")
    api = sqlite_api
    ctx = await jwt_context(api)
    workspace = ctx.workspace_id
    limit = api.app.settings.max_metadata_bytes
    key = (await create_key(api, workspace, api.token(workspace, "admin"))).secret
    near = padded_token(ctx, MAX_CREDENTIAL_LENGTH)
    valid = ctx.sign(ctx.claims())
    ok, exhausted = "OK", "RESOURCE_EXHAUSTED/"
    invalid, missing = f"UNAUTHENTICATED/{INVALID}", f"UNAUTHENTICATED/{MISSING}"
    auth = ("authorization", f"Bearer {valid}")
    at_limit = "Bearer " + "a" * MAX_CREDENTIAL_LENGTH
    filler = ("x-filler", "f" * 12_000)
    cases: dict[str, tuple[Md, str]] = {
        "garbage-at-the-credential-limit": ([("authorization", at_limit)], invalid),
        "garbage-one-over-the-limit": ([("authorization", at_limit + "a")], invalid),
        "a-valid-token-at-the-limit": ([("authorization", f"Bearer {near}")], ok),
        "an-api-key-and-12-kib-of-other-headers": (
            [("authorization", f"Bearer {key}"), filler],
            ok,
        ),
        "authorization-of-64-kib": ([("authorization", "Bearer " + "a" * 65_536)], exhausted),
        "authorization-of-1-mib": ([("authorization", "Bearer " + "a" * 1_048_576)], exhausted),
        "a-huge-x-api-key": ([auth, ("x-api-key", "fk_" + "k" * 20_000)], exhausted),
        "metadata-just-over-the-limit": ([auth, ("x-filler", "f" * limit)], exhausted),
        "a-hundred-headers": ([auth, *[(f"x-h{i}", "v") for i in range(100)]], ok),
        "a-thousand-headers": ([auth, *[(f"x-h{i}", "v") for i in range(1000)]], exhausted),
        "a-binary-header": ([auth, ("x-blob-bin", bytes(range(256)) * 16)], ok),
        "a-huge-binary-header": ([auth, ("x-blob-bin", bytes(range(256)) * 80)], exhausted),
        "authorization-bin-is-another-header": (
            [("authorization-bin", f"Bearer {valid}".encode())],
            missing,
        ),
    }
    for case, (md, expected) in cases.items():
        tries = 3 if expected == exhausted else 20
        answers = {await answer(api, workspace, md) for _ in range(tries)}
        assert answers == {expected}, case
    # The server is healthy and serves the next normal call.
    health = await health_pb2_grpc.HealthStub(api.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert await answer(api, workspace, [auth]) == ok
    # Refusals by our interceptor are logged as such (gRPC's own leave no line);
    # nothing is an error, and no credential is written anywhere.
    codes = {getattr(r, "code", None) for r in rpc_records(caplog)}
    assert codes <= {"OK", "UNAUTHENTICATED"}, codes
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    logged = everything_logged(caplog)
    for secret in (valid, near, key, valid.split(".")[2], key[10:]):
        assert secret not in logged


# ---------------------------------------------------------------- which header counts


async def test_only_one_authorization_header_and_never_x_api_key(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, admin = await api.create_workspace("Mine")
    other, other_admin = await api.create_workspace("Theirs")
    service_key = (await create_key(api, workspace, admin)).secret
    other_admin_key = (await create_key(api, other, other_admin, W.ROLE_ADMIN)).secret
    name = f"workspaces/{workspace}"
    invalid, missing = f"UNAUTHENTICATED/{INVALID}", f"UNAUTHENTICATED/{MISSING}"
    # x-api-key is not read at all: alone, it is no credential...
    assert await answer(api, workspace, [("x-api-key", service_key)]) == missing
    # ... and next to a bearer key it changes nothing: a service key of this
    # workspace, not the other workspace's admin.
    md: Md = [("authorization", f"Bearer {service_key}"), ("x-api-key", other_admin_key)]
    assert await answer(api, workspace, md) == "OK"
    assert await answer(api, other, md) == "PERMISSION_DENIED/" + DENIED_WORKSPACE
    error = await call_error(
        api.workspaces.ListApiKeys(W.ListApiKeysRequest(parent=name), metadata=md)
    )
    assert error.reason == DENIED_ROLE
    # Two authorization headers: which one would count is a guess (and a proxy in
    # front may guess differently), so neither does, in any order.
    good, bad = f"Bearer {service_key}", f"Bearer {other_admin_key}"
    for pair in ((good, bad), (bad, good), (good, good), (good, "Bearer junk")):
        md = [("authorization", value) for value in pair]
        assert await answer(api, workspace, md) == invalid, pair
        assert await answer(api, other, md) == invalid, pair
