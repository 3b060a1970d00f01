"""Cached facts about workspaces that every request needs: existence and quotas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fenlo_server.cache import TtlCache
from fenlo_server.config import Settings
from fenlo_server.storage.db import Database
from fenlo_server.storage.repositories import WorkspaceStore

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


class WorkspaceDirectory:
    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._cache: TtlCache[str, WorkspaceInfo] = TtlCache(settings.cache_ttl_seconds)

    async def get(self, workspace_id: str) -> WorkspaceInfo | None:
        """The workspace's info, or None when it does not exist."""
        cached = self._cache.get(workspace_id)
        if cached is not None:
            return cached
        async with self._db.workspace(workspace_id) as session:
            row = await WorkspaceStore(session).get(workspace_id)
        if row is None:
            return None
        info = WorkspaceInfo(
            workspace_id, effective_quotas(row.quotas, self._settings), dict(row.settings)
        )
        self._cache.put(workspace_id, info)
        return info

    def invalidate(self, workspace_id: str) -> None:
        self._cache.invalidate(workspace_id)
