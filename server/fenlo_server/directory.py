"""Cached facts about workspaces that every request needs: existence and quotas.

Cached in-process and (with Redis) in Redis under ``fenlo:cache:workspace:<id>``;
an update or a delete invalidates both on every replica at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from fenlo_server.cache import LayeredCache, RedisLayer, TtlCache
from fenlo_server.config import Settings
from fenlo_server.invalidation import Invalidations
from fenlo_server.redis_link import RedisLink
from fenlo_server.storage.db import Database
from fenlo_server.storage.repositories import WorkspaceStore

KIND = "workspace"
QUOTA_FIELDS = (
    "requests_per_minute",
    "concurrent_chat_streams",
    "turns_per_minute",
    "tokens_per_day",
    "principal_requests_per_minute",
    "max_document_bytes",
)


@dataclass(frozen=True, slots=True)
class Quotas:
    """A workspace's effective limits (server defaults filled in)."""

    requests_per_minute: int
    concurrent_chat_streams: int
    turns_per_minute: int
    tokens_per_day: int
    principal_requests_per_minute: int  # 0: no per-principal limit
    max_document_bytes: int


@dataclass(frozen=True, slots=True)
class WorkspaceInfo:
    workspace_id: str
    quotas: Quotas
    settings: dict[str, Any]


def effective_quotas(stored: dict[str, Any], settings: Settings) -> Quotas:
    def pick(name: str, default: int) -> int:
        value = int(stored.get(name) or 0)
        return value if value > 0 else default

    return Quotas(
        requests_per_minute=pick("requests_per_minute", settings.default_requests_per_minute),
        concurrent_chat_streams=pick(
            "concurrent_chat_streams", settings.default_concurrent_chat_streams
        ),
        turns_per_minute=pick("turns_per_minute", settings.default_turns_per_minute),
        tokens_per_day=pick("tokens_per_day", settings.default_tokens_per_day),
        principal_requests_per_minute=pick("principal_requests_per_minute", 0),
        max_document_bytes=pick("max_document_bytes", settings.default_max_document_bytes),
    )


def _encode(info: WorkspaceInfo) -> str:
    return json.dumps(
        {"id": info.workspace_id, "quotas": asdict(info.quotas), "settings": info.settings}
    )


def _decode(text: str) -> WorkspaceInfo:
    data = json.loads(text)
    return WorkspaceInfo(str(data["id"]), Quotas(**data["quotas"]), dict(data["settings"]))


class WorkspaceDirectory:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        redis: RedisLink | None = None,
        invalidations: Invalidations | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        layer = (
            RedisLayer(redis, KIND, settings.redis_cache_ttl_seconds, _encode, _decode)
            if redis is not None
            else None
        )
        self._cache: LayeredCache[WorkspaceInfo] = LayeredCache(
            KIND, TtlCache(settings.cache_ttl_seconds), layer, invalidations
        )

    async def get(self, workspace_id: str) -> WorkspaceInfo | None:
        """The workspace's info, or None when it does not exist."""
        return await self._cache.get_or_load(workspace_id, lambda: self._load(workspace_id))

    async def _load(self, workspace_id: str) -> WorkspaceInfo | None:
        async with self._db.workspace(workspace_id) as session:
            row = await WorkspaceStore(session).get(workspace_id)
        if row is None:
            return None
        return WorkspaceInfo(
            workspace_id, effective_quotas(row.quotas, self._settings), dict(row.settings)
        )

    async def invalidate(self, workspace_id: str) -> None:
        """After a change: drop the workspace's entry here, in Redis and on every replica."""
        await self._cache.invalidate(workspace_id)
