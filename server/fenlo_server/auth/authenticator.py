"""Turns an ``authorization`` header into a Principal: a JWT or a workspace API key."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from fenlo_server.auth import apikeys
from fenlo_server.auth.principal import WORKSPACE_ROLES, Principal
from fenlo_server.auth.tokens import TokenService
from fenlo_server.cache import TtlCache
from fenlo_server.errors import Reason, Unauthenticated
from fenlo_server.storage.db import Database
from fenlo_server.storage.repositories import ApiKeyRepository, find_api_key_by_hash

log = logging.getLogger("fenlo.auth")
MAX_CREDENTIAL_LENGTH = 8192
LAST_USE_RESOLUTION_SECONDS = 60.0


class Authenticator:
    def __init__(self, tokens: TokenService, db: Database, cache_ttl: float) -> None:
        self.tokens = tokens
        self._db = db
        self._keys: TtlCache[str, Principal] = TtlCache(cache_ttl)
        self._hash_by_key_id: dict[str, str] = {}
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
        principal = self._keys.get(secret_hash)
        if principal is None:
            async with self._db.unscoped("API-key authentication") as session:
                row = await find_api_key_by_hash(session, secret_hash)
            if row is None:
                raise Unauthenticated(
                    Reason.ERROR_REASON_CREDENTIALS_INVALID,
                    "unknown or deleted API key",
                )
            roles = frozenset(r for r in row.roles if r in WORKSPACE_ROLES)
            principal = Principal(
                subject=f"apikey:{row.id}",
                workspace_id=row.workspace_id,
                roles=roles,
                kind="api_key",
                api_key_id=row.id,
            )
            self._keys.put(secret_hash, principal)
            self._hash_by_key_id[row.id] = secret_hash
        self._note_use(principal)
        return principal

    def forget_api_key(self, key_id: str) -> None:
        """Drop a deleted key from the cache so it stops working at once."""
        secret_hash = self._hash_by_key_id.pop(key_id, None)
        if secret_hash is not None:
            self._keys.invalidate(secret_hash)

    def forget_workspace(self, workspace_id: str) -> None:
        self._keys.clear()
        self._hash_by_key_id.clear()

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
