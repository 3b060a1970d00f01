"""Turns an ``authorization`` header into a Principal: a JWT or a workspace API key.

API-key lookups are cached by the key's SHA-256 hash (never the key itself):
in-process and, with Redis, under ``fenlo:cache:apikey:<hash>`` holding only
the resulting principal (workspace, roles, key id). Deleting a key or a
workspace invalidates the entries on every replica at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from fenlo_server.auth import apikeys
from fenlo_server.auth.principal import WORKSPACE_ROLES, Principal
from fenlo_server.auth.tokens import TokenService
from fenlo_server.cache import LayeredCache, RedisLayer, TtlCache
from fenlo_server.errors import Reason, Unauthenticated
from fenlo_server.invalidation import Invalidations
from fenlo_server.redis_link import RedisLink
from fenlo_server.storage.db import Database
from fenlo_server.storage.repositories import ApiKeyRepository, find_api_key_by_hash

log = logging.getLogger("fenlo.auth")
MAX_CREDENTIAL_LENGTH = 8192
LAST_USE_RESOLUTION_SECONDS = 60.0
KIND = "apikey"
WORKSPACE_KEYS = "apikeys-of-workspace"


def _encode(principal: Principal) -> str:
    return json.dumps(
        {
            "subject": principal.subject,
            "workspace_id": principal.workspace_id,
            "roles": sorted(principal.roles),
            "api_key_id": principal.api_key_id,
        }
    )


def _decode(text: str) -> Principal:
    data = json.loads(text)
    return Principal(
        subject=str(data["subject"]),
        workspace_id=str(data["workspace_id"]),
        roles=frozenset(r for r in data["roles"] if r in WORKSPACE_ROLES),
        kind="api_key",
        api_key_id=str(data["api_key_id"]),
    )


class Authenticator:
    def __init__(
        self,
        tokens: TokenService,
        db: Database,
        cache_ttl: float,
        *,
        redis: RedisLink | None = None,
        redis_ttl: float = 60.0,
        invalidations: Invalidations | None = None,
    ) -> None:
        self.tokens = tokens
        self._db = db
        layer = RedisLayer(redis, KIND, redis_ttl, _encode, _decode) if redis else None
        self._keys: LayeredCache[Principal] = LayeredCache(
            KIND, TtlCache(cache_ttl), layer, invalidations
        )
        self._invalidations = invalidations
        if invalidations is not None:
            invalidations.on(WORKSPACE_KEYS, self._forget_workspace_here)
        self._last_touch: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated(
                Reason.ERROR_REASON_CREDENTIALS_MISSING,
                "missing credentials: send `authorization: Bearer <token or API key>`",
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated(
                Reason.ERROR_REASON_CREDENTIALS_MISSING,
                "malformed authorization header: expected `Bearer <token or API key>`",
            )
        if len(credential) > MAX_CREDENTIAL_LENGTH:
            raise Unauthenticated(Reason.ERROR_REASON_CREDENTIALS_INVALID, "credential too long")
        if apikeys.looks_like_api_key(credential):
            return await self._api_key(credential)
        return self.tokens.verify(credential)

    async def _api_key(self, key: str) -> Principal:
        secret_hash = apikeys.hash_key(key)
        principal = await self._keys.get_or_load(secret_hash, lambda: self._lookup(secret_hash))
        if principal is None:
            raise Unauthenticated(
                Reason.ERROR_REASON_CREDENTIALS_INVALID,
                "unknown or deleted API key",
            )
        self._note_use(principal)
        return principal

    async def _lookup(self, secret_hash: str) -> Principal | None:
        async with self._db.unscoped("API-key authentication") as session:
            row = await find_api_key_by_hash(session, secret_hash)
        if row is None:
            return None
        return Principal(
            subject=f"apikey:{row.id}",
            workspace_id=row.workspace_id,
            roles=frozenset(r for r in row.roles if r in WORKSPACE_ROLES),
            kind="api_key",
            api_key_id=row.id,
        )

    async def forget_api_key(self, secret_hash: str) -> None:
        """Drop a deleted key from every cache (every replica's) so it stops working at once."""
        await self._keys.invalidate(secret_hash)

    async def forget_api_keys(self, secret_hashes: Sequence[str]) -> None:
        """Drop deleted keys (a deleted workspace's) from every cache, Redis included."""
        for secret_hash in secret_hashes:
            await self._keys.invalidate(secret_hash)

    async def forget_workspace(self, workspace_id: str) -> None:
        """Drop the cached keys of a deleted workspace on every replica.

        The in-process layers are cleared whole (they are small and refill from
        Redis); the workspace deletion drops the Redis entries of its keys with
        :meth:`forget_api_keys` (an entry left behind, Redis being down, expires,
        and until then the rate-limit interceptor refuses the key, as its
        workspace no longer exists).
        """
        if self._invalidations is not None:
            await self._invalidations.publish(WORKSPACE_KEYS, workspace_id)
        else:
            self._forget_workspace_here(workspace_id)

    def _forget_workspace_here(self, workspace_id: str) -> None:
        self._keys.local.clear()

    def _note_use(self, principal: Principal) -> None:
        """Record the key's last use, at most once a minute, off the request path."""
        key_id = principal.api_key_id
        assert key_id is not None and principal.workspace_id is not None
        now = time.monotonic()
        if now - self._last_touch.get(key_id, -LAST_USE_RESOLUTION_SECONDS) < (
            LAST_USE_RESOLUTION_SECONDS
        ):
            return
        self._last_touch[key_id] = now
        task = asyncio.get_running_loop().create_task(self._touch(principal.workspace_id, key_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch(self, workspace_id: str, key_id: str) -> None:
        try:
            async with self._db.workspace(workspace_id) as session:
                await ApiKeyRepository(session).touch(key_id, datetime.now(UTC))
        except Exception:  # the request succeeded; a missed timestamp is not worth failing
            log.warning("could not record API key use", exc_info=True, extra={"key": key_id})

    async def drain(self) -> None:
        """Wait for pending last-use updates (on shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
