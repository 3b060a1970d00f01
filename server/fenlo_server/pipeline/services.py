"""What the pipeline's steps may use: small interfaces, wired by the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fenlo_server.config import Settings
    from fenlo_server.directory import WorkspaceDirectory
    from fenlo_server.knowledge.search import KnowledgeSearch
    from fenlo_server.llm.router import LlmRouter
    from fenlo_server.ratelimit.base import RateLimiter
    from fenlo_server.storage.db import Database


@dataclass(frozen=True, slots=True)
class TurnServices:
    settings: Settings
    db: Database
    llm: LlmRouter
    knowledge: KnowledgeSearch
    limiter: RateLimiter
    directory: WorkspaceDirectory
