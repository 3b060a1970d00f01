"""Authentication through the real server: every way a credential can be wrong, every
kind of key that must work, API keys from creation to deletion, and the public
health and reflection services.

The probe RPC is GetWorkspace on the caller's own workspace, which every role may
call, so a refusal can only come from authentication.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fenlo.v1 import conversation_pb2, workspace_pb2
from fenlo_server.config import Settings
from tests.conftest import make_settings, start_app
from tests.helpers import Api, RichError, rich_error

MISSING = "CREDENTIALS_MISSING"
INVALID = "CREDENTIALS_INVALID"
EXPIRED = "CREDENTIALS_EXPIRED"
NOT_YET_VALID = "CREDENTIALS_NOT_YET_VALID"

Metadata = tuple[tuple[str, str], ...] | None


# ---------------------------------------------------------------- helpers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT assembled by hand, so nothing (no library check) stands in the way."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def hs_by_hand(
    header: dict[str, Any], claims: dict[str, Any], secret: bytes, digest: str = "sha256"
) -> str:
    """An HMAC JWT signed with any bytes (PyJWT refuses PEM keys as secrets)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), getattr(hashlib, digest)).digest()
    return f"{head}.{body}.{b64url(mac)}"


def metadata(authorization: str | None) -> Metadata:
    return None if authorization is None else (("authorization", authorization),)


async def probe(api: Api, workspace_id: str, authorization: str | None) -> workspace_pb2.Workspace:
    return await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
        metadata=metadata(authorization),
    )


async def refused(api: Api, workspace_id: str, authorization: str | None) -> RichError:
    with pytest.raises(aio.AioRpcError) as info:
        await probe(api, workspace_id, authorization)
    return rich_error(info.value)


def assert_unauthenticated(error: RichError, reason: str) -> None:
    assert error.code == grpc.StatusCode.UNAUTHENTICATED, error
    assert error.reason == reason, error
    assert error.domain == "fenlo.ai"


@dataclass(frozen=True)
class JwtContext:
    """What a test needs to forge tokens for one running server."""

    secret: bytes
    kid: str
    issuer: str
    audience: str
    workspace_id: str
    now: int

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Valid claims for an admin of the workspace; a change to None drops the claim."""
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "forger",
            "roles": ["admin"],
            "ws": self.workspace_id,
            "iat": self.now,
            "nbf": self.now,
            "exp": self.now + 600,
        }
        for key, value in changes.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def sign(
        self,
        claims: dict[str, Any],
        *,
        secret: bytes | None = None,
        kid: str | bool | None = True,
        algorithm: str = "HS256",
    ) -> str:
        headers: dict[str, Any] = {}
        if kid is True:
            headers["kid"] = self.kid
        elif kid is not False and kid is not None:
            headers["kid"] = kid
        return jwt.encode(
            claims, secret or self.secret, algorithm=algorithm, headers=headers or None
        )


async def jwt_context(api: Api) -> JwtContext:
    workspace_id, _ = await api.create_workspace("Auth")
    settings = api.app.settings
    assert settings.jwt_secret is not None
    # The kid the server puts on its own HS256 tokens: read it off one of them.
    kid = jwt.get_unverified_header(api.platform_token)["kid"]
    return JwtContext(
        secret=settings.jwt_secret.get_secret_value().encode(),
        kid=kid,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        workspace_id=workspace_id,
        now=int(time.time()),
    )


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh migrated SQLite file for a server with custom settings."""
    directory = tmp_path / "custom-db"
    directory.mkdir()
    target = directory / "fenlo.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite+aiosqlite:///{target}"


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Api]:
    app = await start_app(settings)
    try:
        async with Api(app) as helper:
            yield helper
    finally:
        await app.stop(grace=0)


# ---------------------------------------------------------------- the header


async def test_missing_header_is_credentials_missing(sqlite_api: Api) -> None:
    workspace_id, _ = await sqlite_api.create_workspace()
    error = await refused(sqlite_api, workspace_id, None)
    assert_unauthenticated(error, MISSING)


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Token abc", "{token}"],
    ids=["empty", "bearer-only", "bearer-space", "bearer-spaces", "basic", "token-scheme", "raw"],
)
async def test_malformed_header_is_credentials_missing(sqlite_api: Api, header: str) -> None:
    workspace_id, token = await sqlite_api.create_workspace()
    error = await refused(sqlite_api, workspace_id, header.format(token=token))
    assert_unauthenticated(error, MISSING)


async def test_bearer_scheme_is_case_insensitive(sqlite_api: Api) -> None:
    workspace_id, token = await sqlite_api.create_workspace("Case")
    for scheme in ("Bearer", "bearer", "BEARER"):
        got = await probe(sqlite_api, workspace_id, f"{scheme} {token}")
        assert got.name == f"workspaces/{workspace_id}"


# ---------------------------------------------------------------- HS256 JWTs


async def test_server_issued_hs256_token_is_accepted(sqlite_api: Api) -> None:
    workspace_id, token = await sqlite_api.create_workspace("Issued")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    got = await probe(sqlite_api, workspace_id, f"Bearer {token}")
    assert got.display_name == "Issued"


async def test_hand_forged_baseline_token_is_accepted(sqlite_api: Api) -> None:
    """The forged tokens below differ from this accepted one in one thing only."""
    ctx = await jwt_context(sqlite_api)
    got = await probe(sqlite_api, ctx.workspace_id, f"Bearer {ctx.sign(ctx.claims())}")
    assert got.name == f"workspaces/{ctx.workspace_id}"


async def test_clock_skew_within_leeway_is_accepted(sqlite_api: Api) -> None:
    ctx = await jwt_context(sqlite_api)
    leeway = sqlite_api.app.settings.jwt_leeway_seconds
    assert leeway >= 10
    just_expired = ctx.sign(ctx.claims(exp=ctx.now - leeway // 3))
    almost_valid = ctx.sign(ctx.claims(nbf=ctx.now + leeway // 3))
    for token in (just_expired, almost_valid):
        await probe(sqlite_api, ctx.workspace_id, f"Bearer {token}")


Forge = Callable[[JwtContext], str]


def _alg_none(ctx: JwtContext, kid: bool) -> str:
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid:
        header["kid"] = ctx.kid
    return craft(header, ctx.claims())


def _tampered(ctx: JwtContext) -> str:
    """A valid token whose payload was swapped for a platform-admin one."""
    head, _, signature = ctx.sign(ctx.claims()).split(".")
    body = b64url(json.dumps(ctx.claims(roles=["platform_admin"], ws=None)).encode())
    return f"{head}.{body}.{signature}"


FORGED: dict[str, tuple[Forge, str]] = {
    "garbage": (lambda ctx: "not-a-jwt", INVALID),
    "garbage-three-parts": (lambda ctx: "a.b.c", INVALID),
    "expired": (lambda ctx: ctx.sign(ctx.claims(exp=ctx.now - 3600)), EXPIRED),
    "expired-beyond-leeway": (lambda ctx: ctx.sign(ctx.claims(exp=ctx.now - 120)), EXPIRED),
    "nbf-in-future": (lambda ctx: ctx.sign(ctx.claims(nbf=ctx.now + 300)), NOT_YET_VALID),
    "wrong-signature": (
        lambda ctx: ctx.sign(ctx.claims(), secret=b"another-secret-" + ctx.secret),
        INVALID,
    ),
    "tampered-payload": (_tampered, INVALID),
    "alg-none": (lambda ctx: _alg_none(ctx, kid=True), INVALID),
    "alg-none-no-kid": (lambda ctx: _alg_none(ctx, kid=False), INVALID),
    "alg-none-with-signature": (
        lambda ctx: craft({"alg": "none", "kid": ctx.kid}, ctx.claims(), b"sig"),
        INVALID,
    ),
    "hs512-with-the-hs256-key": (
        lambda ctx: hs_by_hand(
            {"alg": "HS512", "kid": ctx.kid}, ctx.claims(), ctx.secret, "sha512"
        ),
        INVALID,
    ),
    "wrong-audience": (lambda ctx: ctx.sign(ctx.claims(aud="someone-else")), INVALID),
    "wrong-issuer": (lambda ctx: ctx.sign(ctx.claims(iss="https://evil.example")), INVALID),
    "no-audience": (lambda ctx: ctx.sign(ctx.claims(aud=None)), INVALID),
    "no-issuer": (lambda ctx: ctx.sign(ctx.claims(iss=None)), INVALID),
    "unknown-kid": (lambda ctx: ctx.sign(ctx.claims(), kid="no-such-key"), INVALID),
    "no-kid": (lambda ctx: ctx.sign(ctx.claims(), kid=False), INVALID),
    "kid-not-a-string": (
        lambda ctx: hs_by_hand({"alg": "HS256", "kid": 7}, ctx.claims(), ctx.secret),
        INVALID,
    ),
    "no-sub": (lambda ctx: ctx.sign(ctx.claims(sub=None)), INVALID),
    "empty-sub": (lambda ctx: ctx.sign(ctx.claims(sub="")), INVALID),
    "sub-not-a-string": (lambda ctx: ctx.sign(ctx.claims(sub=42)), INVALID),
    "no-exp": (lambda ctx: ctx.sign(ctx.claims(exp=None)), INVALID),
    "exp-not-a-number": (lambda ctx: ctx.sign(ctx.claims(exp="tomorrow")), INVALID),
    "no-roles": (lambda ctx: ctx.sign(ctx.claims(roles=None)), INVALID),
    "roles-not-a-list": (lambda ctx: ctx.sign(ctx.claims(roles="admin")), INVALID),
    "roles-empty": (lambda ctx: ctx.sign(ctx.claims(roles=[])), INVALID),
    "roles-unknown": (lambda ctx: ctx.sign(ctx.claims(roles=["admin", "superuser"])), INVALID),
    "roles-not-strings": (lambda ctx: ctx.sign(ctx.claims(roles=["admin", 1])), INVALID),
    "no-ws-without-platform-admin": (lambda ctx: ctx.sign(ctx.claims(ws=None)), INVALID),
    "ws-not-a-string": (lambda ctx: ctx.sign(ctx.claims(ws=12)), INVALID),
    "ws-empty": (lambda ctx: ctx.sign(ctx.claims(ws="")), INVALID),
    "ws-empty-platform-admin": (
        lambda ctx: ctx.sign(ctx.claims(ws="", roles=["platform_admin"])),
        INVALID,
    ),
}


@pytest.mark.parametrize("case", list(FORGED))
async def test_bad_jwt_is_refused(sqlite_api: Api, case: str) -> None:
    forge, reason = FORGED[case]
    ctx = await jwt_context(sqlite_api)
    error = await refused(sqlite_api, ctx.workspace_id, f"Bearer {forge(ctx)}")
    assert_unauthenticated(error, reason)


# ---------------------------------------------------------------- asymmetric keys


@dataclass(frozen=True)
class KeyPair:
    kid: str
    algorithm: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            text = jwt.algorithms.RSAAlgorithm.to_jwk(public)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            text = jwt.algorithms.OKPAlgorithm.to_jwk(public)
        else:
            text = jwt.algorithms.ECAlgorithm.to_jwk(public)
        return {**json.loads(text), "kid": self.kid}

    def public_pem(self, fmt: serialization.PublicFormat) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(serialization.Encoding.PEM, fmt)
        return pem

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid}
        )


@dataclass(frozen=True)
class Keys:
    rsa_1: KeyPair
    rsa_2: KeyPair
    ed: KeyPair
    ec: KeyPair
    stranger: KeyPair  # an RSA key the server does not know

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in (self.rsa_1, self.rsa_2, self.ed, self.ec)]}


@pytest.fixture(scope="module")
def keys() -> Keys:
    def rsa_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    return Keys(
        rsa_1=KeyPair("rsa-2025", "RS256", rsa_key()),
        rsa_2=KeyPair("rsa-2026", "RS256", rsa_key()),
        ed=KeyPair("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ec=KeyPair("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        stranger=KeyPair("rsa-2025", "RS256", rsa_key()),
    )


@asynccontextmanager
async def jwks_server(
    keys: Keys, tmp_path: Path, sqlite_url: str
) -> AsyncIterator[tuple[Api, JwtContext]]:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    async with running(make_settings(tmp_path, sqlite_url, jwt_jwks_file=path)) as api:
        yield api, await jwt_context(api)


async def test_jwks_keys_are_accepted_and_rotation_works(
    keys: Keys, tmp_path: Path, sqlite_url: str
) -> None:
    async with jwks_server(keys, tmp_path, sqlite_url) as (api, ctx):
        for pair in (keys.rsa_1, keys.rsa_2, keys.ed, keys.ec):
            token = pair.sign(ctx.claims(sub=f"user-{pair.kid}"))
            assert jwt.get_unverified_header(token)["alg"] == pair.algorithm
            got = await probe(api, ctx.workspace_id, f"Bearer {token}")
            assert got.name == f"workspaces/{ctx.workspace_id}", pair.kid
        # The server's own HS256 key keeps working next to the JWKS keys.
        await probe(api, ctx.workspace_id, f"Bearer {ctx.sign(ctx.claims())}")


def _hs256_with_public_pem(keys: Keys, fmt: serialization.PublicFormat) -> Callable[..., str]:
    def forge(ctx: JwtContext) -> str:
        pem = keys.rsa_1.public_pem(fmt)
        header = {"alg": "HS256", "typ": "JWT", "kid": keys.rsa_1.kid}
        return hs_by_hand(header, ctx.claims(), pem)

    return forge


def _jwks_forgeries(keys: Keys) -> dict[str, Callable[[JwtContext], str]]:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pkcs1 = serialization.PublicFormat.PKCS1
    return {
        "hs256-signed-with-rsa-public-pem": _hs256_with_public_pem(keys, spki),
        "hs256-signed-with-rsa-pkcs1-pem": _hs256_with_public_pem(keys, pkcs1),
        "alg-none-with-rsa-kid": lambda ctx: craft(
            {"alg": "none", "kid": keys.rsa_1.kid}, ctx.claims()
        ),
        "signed-by-one-key-named-as-the-other": lambda ctx: keys.rsa_1.sign(
            ctx.claims(), kid=keys.rsa_2.kid
        ),
        "unknown-rsa-key-with-a-trusted-kid": lambda ctx: keys.stranger.sign(ctx.claims()),
        "rs384-with-an-rs256-key": lambda ctx: jwt.encode(
            ctx.claims(), keys.rsa_1.private, algorithm="RS384", headers={"kid": keys.rsa_1.kid}
        ),
        "eddsa-token-naming-the-rsa-key": lambda ctx: keys.ed.sign(ctx.claims(), kid="rsa-2025"),
        "expired-rs256": lambda ctx: keys.rsa_1.sign(ctx.claims(exp=ctx.now - 3600)),
        "rs256-wrong-audience": lambda ctx: keys.rsa_1.sign(ctx.claims(aud="other")),
    }


async def test_jwks_forgeries_are_refused(keys: Keys, tmp_path: Path, sqlite_url: str) -> None:
    async with jwks_server(keys, tmp_path, sqlite_url) as (api, ctx):
        for case, forge in _jwks_forgeries(keys).items():
            error = await refused(api, ctx.workspace_id, f"Bearer {forge(ctx)}")
            expected = EXPIRED if case.startswith("expired") else INVALID
            assert error.code == grpc.StatusCode.UNAUTHENTICATED, case
            assert error.reason == expected, (case, error)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("explicit_kid", [False, True], ids=["thumbprint-kid", "explicit-kid"])
async def test_server_issues_with_a_private_key_file(
    keys: Keys, tmp_path: Path, sqlite_url: str, kind: str, explicit_kid: bool
) -> None:
    pair = keys.rsa_1 if kind == "rsa" else keys.ed
    pem = pair.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "signing.pem"
    path.write_bytes(pem)
    overrides: dict[str, Any] = {"jwt_private_key_file": path}
    if explicit_kid:
        overrides["jwt_private_key_id"] = "signing-key-7"
    async with running(make_settings(tmp_path, sqlite_url, **overrides)) as api:
        workspace_id, token = await api.create_workspace("Signed")
        header = jwt.get_unverified_header(token)
        assert header["alg"] == pair.algorithm
        if explicit_kid:
            assert header["kid"] == "signing-key-7"
        # The token verifies with the public key alone, and the server accepts it.
        claims = jwt.decode(
            token,
            pair.private.public_key(),
            algorithms=[pair.algorithm],
            audience=api.app.settings.jwt_audience,
        )
        assert claims["ws"] == workspace_id
        got = await probe(api, workspace_id, f"Bearer {token}")
        assert got.display_name == "Signed"
        # A token signed elsewhere with the same private key and kid is accepted too...
        ctx = await jwt_context(api)
        outside = jwt.encode(
            ctx.claims(), pair.private, algorithm=pair.algorithm, headers={"kid": header["kid"]}
        )
        await probe(api, ctx.workspace_id, f"Bearer {outside}")
        # ...but not one signed with the public key as an HMAC secret.
        public_pem = pair.public_pem(serialization.PublicFormat.SubjectPublicKeyInfo)
        forged = hs_by_hand({"alg": "HS256", "kid": header["kid"]}, ctx.claims(), public_pem)
        assert_unauthenticated(await refused(api, ctx.workspace_id, f"Bearer {forged}"), INVALID)


# ---------------------------------------------------------------- API keys


async def create_key(
    api: Api,
    workspace_id: str,
    token: str,
    *roles: workspace_pb2.Role.ValueType,
    display_name: str = "key",
) -> workspace_pb2.CreateApiKeyResponse:
    return await api.workspaces.CreateApiKey(
        workspace_pb2.CreateApiKeyRequest(
            parent=f"workspaces/{workspace_id}",
            api_key=workspace_pb2.ApiKey(display_name=display_name, roles=list(roles)),
        ),
        metadata=api.md(token),
    )


async def list_keys(api: Api, workspace_id: str, token: str) -> workspace_pb2.ListApiKeysResponse:
    return await api.workspaces.ListApiKeys(
        workspace_pb2.ListApiKeysRequest(parent=f"workspaces/{workspace_id}"),
        metadata=api.md(token),
    )


async def test_api_key_lifecycle(api: Api) -> None:
    workspace_id, admin = await api.create_workspace("Keys")
    before = datetime.now(UTC) - timedelta(seconds=5)
    created = await create_key(
        api, workspace_id, admin, workspace_pb2.ROLE_AGENT, display_name="bridge"
    )
    secret = created.secret
    key = created.api_key
    assert secret.startswith("fk_")
    assert len(secret) >= 40
    assert key.prefix.startswith("fk_")
    assert secret.startswith(key.prefix)
    assert len(key.prefix) < len(secret) // 2
    assert key.name.startswith(f"workspaces/{workspace_id}/apiKeys/")
    assert list(key.roles) == [workspace_pb2.ROLE_AGENT]
    assert key.display_name == "bridge"
    assert not key.HasField("last_use_time")

    # The listing shows the key without its secret.
    listed = await list_keys(api, workspace_id, admin)
    (entry,) = [k for k in listed.api_keys if k.name == key.name]
    assert entry.prefix == key.prefix
    assert list(entry.roles) == [workspace_pb2.ROLE_AGENT]
    assert entry.display_name == "bridge"
    raw = listed.SerializeToString()
    assert secret.encode() not in raw
    assert secret[len(key.prefix) :].encode() not in raw
    assert secret not in str(listed)

    # The key authenticates with exactly its roles: an agent.
    got = await probe(api, workspace_id, f"Bearer {secret}")
    assert got.name == f"workspaces/{workspace_id}"
    conversation = await api.create_conversation(workspace_id, secret, external_contact_id="c1")
    with pytest.raises(aio.AioRpcError) as info:
        await api.conversations.DeleteConversation(
            conversation_pb2.DeleteConversationRequest(name=conversation.name),
            metadata=api.md(secret),
        )
    error = rich_error(info.value)
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "PERMISSION_DENIED_ROLE"
    with pytest.raises(aio.AioRpcError) as info:
        await list_keys(api, workspace_id, secret)
    assert rich_error(info.value).reason == "PERMISSION_DENIED_ROLE"

    # Its last use is recorded in the background: poll, bounded.
    entry = await _wait_for_last_use(api, workspace_id, admin, key.name)
    used = entry.last_use_time.ToDatetime(tzinfo=UTC)
    assert before - timedelta(minutes=1) <= used <= datetime.now(UTC) + timedelta(seconds=5)
    assert secret.encode() not in (await list_keys(api, workspace_id, admin)).SerializeToString()

    # Deleted: the very next request with it fails, although it was just cached.
    await probe(api, workspace_id, f"Bearer {secret}")
    await api.workspaces.DeleteApiKey(
        workspace_pb2.DeleteApiKeyRequest(name=key.name), metadata=api.md(admin)
    )
    error = await refused(api, workspace_id, f"Bearer {secret}")
    assert_unauthenticated(error, INVALID)
    listed = await list_keys(api, workspace_id, admin)
    assert key.name not in [k.name for k in listed.api_keys]
    with pytest.raises(aio.AioRpcError) as info:
        await api.workspaces.DeleteApiKey(
            workspace_pb2.DeleteApiKeyRequest(name=key.name), metadata=api.md(admin)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert rich_error(info.value).reason == "RESOURCE_NOT_FOUND"


async def _wait_for_last_use(
    api: Api, workspace_id: str, admin: str, name: str
) -> workspace_pb2.ApiKey:
    deadline = time.monotonic() + 5.0
    while True:
        listed = await list_keys(api, workspace_id, admin)
        (entry,) = [k for k in listed.api_keys if k.name == name]
        if entry.HasField("last_use_time"):
            return entry
        assert time.monotonic() < deadline, "last_use_time was never set"
        await asyncio.sleep(0.05)


async def test_api_key_roles(api: Api) -> None:
    workspace_id, admin = await api.create_workspace("Roles")
    admin_key = await create_key(api, workspace_id, admin, workspace_pb2.ROLE_ADMIN)
    default_key = await create_key(api, workspace_id, admin)
    assert list(default_key.api_key.roles) == [workspace_pb2.ROLE_SERVICE]

    # An admin key manages keys; a service key (the default) may not.
    listed = await list_keys(api, workspace_id, admin_key.secret)
    assert {k.name for k in listed.api_keys} == {
        admin_key.api_key.name,
        default_key.api_key.name,
    }
    await probe(api, workspace_id, f"Bearer {default_key.secret}")
    with pytest.raises(aio.AioRpcError) as info:
        await list_keys(api, workspace_id, default_key.secret)
    error = rich_error(info.value)
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "PERMISSION_DENIED_ROLE"


@pytest.mark.parametrize(
    "roles",
    [
        [workspace_pb2.ROLE_PLATFORM_ADMIN],
        [workspace_pb2.ROLE_ADMIN, workspace_pb2.ROLE_PLATFORM_ADMIN],
        [workspace_pb2.ROLE_UNSPECIFIED],
    ],
    ids=["platform-admin", "admin-and-platform-admin", "unspecified"],
)
async def test_create_api_key_refuses_roles_a_key_cannot_have(
    api: Api, roles: list[workspace_pb2.Role.ValueType]
) -> None:
    workspace_id, admin = await api.create_workspace("NoPlatformKeys")
    for token in (admin, api.platform_token):
        with pytest.raises(aio.AioRpcError) as info:
            await create_key(api, workspace_id, token, *roles)
        error = rich_error(info.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "INVALID_ARGUMENT"
        bad_index = len(roles) - 1
        assert [f for f, _ in error.violations] == [f"api_key.roles[{bad_index}]"]
    assert list((await list_keys(api, workspace_id, admin)).api_keys) == []


@pytest.mark.parametrize(
    "credential",
    ["fk_", "fk_" + "A" * 43, "fk_this-key-was-never-issued"],
    ids=["prefix-only", "well-formed", "short"],
)
async def test_unknown_api_key_is_credentials_invalid(api: Api, credential: str) -> None:
    workspace_id, admin = await api.create_workspace("Unknown")
    await create_key(api, workspace_id, admin)  # a real key exists; this one is not it
    error = await refused(api, workspace_id, f"Bearer {credential}")
    assert_unauthenticated(error, INVALID)


# ---------------------------------------------------------------- public services


async def test_health_answers_without_credentials(sqlite_api: Api) -> None:
    stub = health_pb2_grpc.HealthStub(sqlite_api.channel)
    services = ["", "fenlo.v1.WorkspaceService", "fenlo.v1.ConversationService"]
    services.append("fenlo.v1.ChatService")
    for service in services:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    # Bad credentials are not even looked at.
    reply = await stub.Check(health_pb2.HealthCheckRequest(), metadata=metadata("Bearer junk"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_answers_without_credentials(sqlite_api: Api) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(sqlite_api.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="fenlo.v1.WorkspaceService"),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    assert len(responses) == 2
    listed = {s.name for s in responses[0].list_services_response.service}
    assert {
        "fenlo.v1.WorkspaceService",
        "fenlo.v1.ConversationService",
        "fenlo.v1.ChatService",
        "grpc.health.v1.Health",
    } <= listed
    assert responses[1].file_descriptor_response.file_descriptor_proto


async def test_fenlo_rpcs_need_credentials_on_the_same_channel(sqlite_api: Api) -> None:
    """The public services are public by name, not because the channel is trusted."""
    stub = health_pb2_grpc.HealthStub(sqlite_api.channel)
    await stub.Check(health_pb2.HealthCheckRequest())
    with pytest.raises(aio.AioRpcError) as info:
        await sqlite_api.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest())
    assert_unauthenticated(rich_error(info.value), MISSING)
