"""A workspace's data from erasure to deletion, everywhere it lives.

The database rows go in one transaction (``storage/lifecycle.py``); then the
copies outside the database: the live Chat streams of this server, the
in-memory caches (workspace directory, credentials, the knowledge index), the
vector store's namespaces and the Redis keys that carry the workspace id.
Redis is best effort: when it is down the deletion still succeeds, the failure
is logged, and the keys (all of which have expiries) are left to expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fenlo_server.errors import Reason, Unavailable
from fenlo_server.events.types import CONTACT_ERASED, Event
from fenlo_server.knowledge.types import VectorStore
from fenlo_server.storage.db import Database
from fenlo_server.storage.lifecycle import delete_workspace_rows, erase_contact
from fenlo_server.storage.models import WorkspaceRow
from fenlo_server.storage.outbox import append_events

log = logging.getLogger("fenlo.lifecycle")

REDIS_SCAN_COUNT = 500  # keys asked for per SCAN call
REDIS_SCAN_MAX_CALLS = 2000  # at most this many SCAN calls per deletion ...
REDIS_SCAN_SECONDS = 5.0  # ... and this long; what is left expires by itself
REDIS_CALL_TIMEOUT = 1.0


class LiveStreams(Protocol):
    """The live Chat streams of this server (the chat hub)."""

    def end_conversations(self, conversation_ids: Sequence[str]) -> int: ...

    def end_workspace(self, workspace_id: str) -> int: ...


@dataclass(frozen=True, slots=True)
class ContactErasure:
    conversations: int
    messages: int
    leads: int
    events: int
    streams_ended: int
    contact_hash: str


async def delete_redis_keys(
    redis: Any,
    fragment: str,
    *,
    keep: Callable[[str], bool] | None = None,
    max_calls: int = REDIS_SCAN_MAX_CALLS,
    budget_seconds: float = REDIS_SCAN_SECONDS,
) -> int | None:
    """Delete the keys whose name contains ``fragment`` (a server-made id, so it
    holds no glob characters), except those ``keep`` says to keep. Returns how
    many were deleted, or None when Redis could not be reached (logged)."""
    started = time.monotonic()
    cursor: Any = 0
    deleted = 0
    try:
        for _ in range(max_calls):
            cursor, keys = await asyncio.wait_for(
                redis.scan(cursor=cursor, match=f"*{fragment}*", count=REDIS_SCAN_COUNT),
                REDIS_CALL_TIMEOUT,
            )
            names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
            doomed = [k for k in names if keep is None or not keep(k)]
            if doomed:
                deleted += int(await asyncio.wait_for(redis.unlink(*doomed), REDIS_CALL_TIMEOUT))
            if int(cursor) == 0:
                return deleted
            if time.monotonic() - started > budget_seconds:
                break
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.warning(
            "redis keys not deleted; they expire by themselves",
            extra={"fragment": fragment, "error": repr(error)},
        )
        return None
    log.warning(
        "redis key scan stopped at its bound; the remaining keys expire by themselves",
        extra={"fragment": fragment, "deleted": deleted},
    )
    return deleted


class DataLifecycle:
    """Erases a contact and deletes a workspace, wherever their data lives."""

    def __init__(
        self,
        db: Database,
        *,
        hash_key: bytes,
        live: LiveStreams | None = None,
        external_store: VectorStore | None = None,
        external_models: Sequence[str] = (),
        redis: Any = None,
        forget: Sequence[Callable[[str], Awaitable[None] | None]] = (),
    ) -> None:
        self._db = db
        # A key of its own, derived once, so the hash reveals nothing of the secret.
        self._hash_key = hmac.new(hash_key, b"fenlo contact hash", hashlib.sha256).digest()
        self.live = live
        self._external = external_store
        self._external_models = list(external_models)
        self._redis = redis
        self._forget = list(forget)  # in-process caches keyed by workspace id

    def contact_hash(self, workspace_id: str, external_contact_id: str) -> str:
        """A keyed hash of the contact id: the same for the same contact of the same
        workspace, and useless to anyone without the server's secret."""
        message = f"{workspace_id}\0{external_contact_id}".encode()
        return hmac.new(self._hash_key, message, hashlib.sha256).hexdigest()

    async def erase_contact(self, workspace_id: str, external_contact_id: str) -> ContactErasure:
        digest = self.contact_hash(workspace_id, external_contact_id)
        async with self._db.workspace(workspace_id) as session:
            erased = await erase_contact(session, external_contact_id)
            await append_events(
                session,
                [
                    Event(
                        CONTACT_ERASED,
                        {
                            "contact_hash": digest,
                            "conversations": len(erased.conversation_ids),
                            "messages": erased.messages,
                            "leads": erased.leads,
                        },
                    )
                ],
            )
        ended = self.live.end_conversations(erased.conversation_ids) if self.live else 0
        if self._redis is not None and erased.conversation_ids:
            ids = erased.conversation_ids
            await delete_redis_keys(
                self._redis, workspace_id, keep=lambda key: not any(c in key for c in ids)
            )
        log.info(
            "contact erased",
            extra={
                "workspace": workspace_id,
                "contact_hash": digest,
                "conversations": len(erased.conversation_ids),
                "messages": erased.messages,
            },
        )
        return ContactErasure(
            len(erased.conversation_ids),
            erased.messages,
            erased.leads,
            erased.events,
            ended,
            digest,
        )

    async def delete_workspace(self, workspace_id: str) -> bool:
        """Delete the workspace and everything of it; False when there is none.

        The vector store is emptied first: if it cannot be, nothing is deleted and
        the caller may retry. It is emptied again after the rows are gone, for an
        ingestion job that wrote vectors meanwhile (best effort, logged).
        """
        async with self._db.workspace(workspace_id) as session:
            if await session.get(WorkspaceRow, workspace_id) is None:
                return False
        await self._empty_vectors(workspace_id, strict=True)
        async with self._db.workspace(workspace_id) as session:
            if not await delete_workspace_rows(session, workspace_id):
                return False
        for forget in self._forget:
            done = forget(workspace_id)
            if done is not None:
                await done
        ended = self.live.end_workspace(workspace_id) if self.live else 0
        await self._empty_vectors(workspace_id, strict=False)
        keys = await delete_redis_keys(self._redis, workspace_id) if self._redis else 0
        log.info(
            "workspace deleted",
            extra={"workspace": workspace_id, "streams_ended": ended, "redis_keys": keys},
        )
        return True

    async def _empty_vectors(self, workspace_id: str, *, strict: bool) -> None:
        if self._external is None:
            return
        try:
            await self._external.delete_workspace(workspace_id, self._external_models)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if strict:
                raise Unavailable(
                    Reason.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
                    "the workspace's vectors could not be deleted from the vector store; "
                    "nothing was deleted, retry later",
                    retry_after=5.0,
                ) from error
            log.warning(
                "vectors written during the workspace deletion may remain",
                extra={"workspace": workspace_id, "error": repr(error)},
            )
