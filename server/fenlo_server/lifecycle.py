"""A workspace's data from erasure to deletion, everywhere it lives.

The database rows go in one transaction (``storage/lifecycle.py``); then the
copies outside the database: the live Chat streams of this server, the
in-memory caches (workspace directory, credentials, the knowledge index, and
the caches of every workspace's texts, on every replica), the vector store's
namespaces, the Redis keys that carry the workspace id, the events' entries in
the Redis streams, and the SQLite write-ahead log. Redis is best effort: when
it is down the deletion still succeeds, the failure is logged, and the keys
(all of which have expiries) are left to expire, the stream entries to be
trimmed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fenlo_server.errors import Reason, Unavailable
from fenlo_server.events.relay import StreamKeys
from fenlo_server.events.types import CONTACT_ERASED, Event
from fenlo_server.knowledge.types import VectorStore
from fenlo_server.storage.db import Database
from fenlo_server.storage.lifecycle import api_key_hashes, delete_workspace_rows, erase_contact
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


async def _bounded(
    page: Callable[[], Awaitable[tuple[int, bool]]],
    *,
    max_calls: int,
    budget_seconds: float,
    failed: str,
    stopped: str,
    about: dict[str, Any],
) -> int | None:
    """Run ``page`` (one bounded Redis step: how many it deleted, and whether it was
    the last) until done, ``max_calls`` or ``budget_seconds``. Returns how many were
    deleted, or None when Redis could not be reached; both limits are logged."""
    started = time.monotonic()
    deleted = 0
    try:
        for _ in range(max_calls):
            count, done = await page()
            deleted += count
            if done:
                return deleted
            if time.monotonic() - started > budget_seconds:
                break
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.warning(failed, extra={**about, "error": repr(error)})
        return None
    log.warning(stopped, extra={**about, "deleted": deleted})
    return deleted


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
    cursor: Any = 0

    async def page() -> tuple[int, bool]:
        nonlocal cursor
        cursor, keys = await asyncio.wait_for(
            redis.scan(cursor=cursor, match=f"*{fragment}*", count=REDIS_SCAN_COUNT),
            REDIS_CALL_TIMEOUT,
        )
        names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
        doomed = [k for k in names if keep is None or not keep(k)]
        deleted = 0
        if doomed:
            deleted = int(await asyncio.wait_for(redis.unlink(*doomed), REDIS_CALL_TIMEOUT))
        return deleted, int(cursor) == 0

    return await _bounded(
        page,
        max_calls=max_calls,
        budget_seconds=budget_seconds,
        failed="redis keys not deleted; they expire by themselves",
        stopped="redis key scan stopped at its bound; the remaining keys expire by themselves",
        about={"fragment": fragment},
    )


def _stream_field(fields: Mapping[Any, Any], name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name, b""))
    return value if isinstance(value, bytes) else str(value).encode()


def naming(workspace_id: str, names: Sequence[str]) -> Callable[[Mapping[Any, Any]], bool]:
    """Whether a stream entry is an event of the workspace whose payload holds one of
    ``names`` (any event of the workspace when ``names`` is empty)."""
    workspace = workspace_id.encode()
    fragments = [n.encode() for n in names]

    def matches(fields: Mapping[Any, Any]) -> bool:
        if _stream_field(fields, "workspace") != workspace:
            return False
        payload = _stream_field(fields, "payload")
        return not fragments or any(f in payload for f in fragments)

    return matches


async def delete_stream_entries(
    redis: Any,
    key: str,
    matches: Callable[[Mapping[Any, Any]], bool],
    *,
    max_calls: int = REDIS_SCAN_MAX_CALLS,
    budget_seconds: float = REDIS_SCAN_SECONDS,
) -> int | None:
    """Delete the entries of the Redis stream ``key`` that ``matches``, read in pages
    (``XRANGE``, bounded like :func:`delete_redis_keys`), with ``XDEL``. Returns
    how many were deleted, or None when Redis could not be reached (logged)."""
    start = "-"

    async def page() -> tuple[int, bool]:
        nonlocal start
        entries = await asyncio.wait_for(
            redis.xrange(key, min=start, max="+", count=REDIS_SCAN_COUNT), REDIS_CALL_TIMEOUT
        )
        doomed = [entry_id for entry_id, fields in entries if matches(fields)]
        deleted = 0
        if doomed:
            deleted = int(await asyncio.wait_for(redis.xdel(key, *doomed), REDIS_CALL_TIMEOUT))
        if len(entries) < REDIS_SCAN_COUNT:
            return deleted, True
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        return deleted, False

    return await _bounded(
        page,
        max_calls=max_calls,
        budget_seconds=budget_seconds,
        failed="redis stream entries not deleted; the stream's trimming drops them in time",
        stopped="redis stream scan stopped at its bound; "
        "the stream's trimming drops the rest in time",
        about={"stream": key},
    )


async def delete_set_members(
    redis: Any, key: str, fragment: str, *, max_calls: int = REDIS_SCAN_MAX_CALLS
) -> int | None:
    """Remove the members of the sorted set ``key`` that contain ``fragment`` (a
    server-made id), found with ``ZSCAN MATCH`` (bounded like
    :func:`delete_redis_keys`). Returns how many went, or None when Redis could
    not be reached (logged)."""
    cursor: Any = 0

    async def page() -> tuple[int, bool]:
        nonlocal cursor
        cursor, members = await asyncio.wait_for(
            redis.zscan(key, cursor=cursor, match=f"*{fragment}*", count=REDIS_SCAN_COUNT),
            REDIS_CALL_TIMEOUT,
        )
        doomed = [member for member, _score in members]
        removed = 0
        if doomed:
            removed = int(await asyncio.wait_for(redis.zrem(key, *doomed), REDIS_CALL_TIMEOUT))
        return removed, int(cursor) == 0

    return await _bounded(
        page,
        max_calls=max_calls,
        budget_seconds=REDIS_SCAN_SECONDS,
        failed="queued jobs not removed; they find nothing to do when they run",
        stopped="queued-job scan stopped at its bound; the rest find nothing to do",
        about={"queue": key},
    )


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
        event_streams: StreamKeys | None = None,
        job_queue: str | None = None,
        forget: Sequence[Callable[[str], Awaitable[None] | None]] = (),
        forget_api_keys: Callable[[Sequence[str]], Awaitable[None]] | None = None,
        purge: Sequence[Callable[[str], Awaitable[None] | None]] = (),
    ) -> None:
        self._db = db
        # A key of its own, derived once, so the hash reveals nothing of the secret.
        self._hash_key = hmac.new(hash_key, b"fenlo contact hash", hashlib.sha256).digest()
        self.live = live
        self._external = external_store
        self._external_models = list(external_models)
        self._redis = redis
        self._streams = event_streams
        self._job_queue = job_queue  # the ARQ queue (a sorted set of job ids)
        self._forget = list(forget)  # in-process caches keyed by workspace id
        self._forget_api_keys = forget_api_keys  # caches keyed by an API key's hash
        # Caches that may hold any workspace's texts (run after an erasure and after a
        # deletion; the composition root's hook reaches every replica).
        self._purge = list(purge)

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
            if self._streams is not None:
                # The published events that name the erased rows: in the workspace's
                # stream and in the replicas' shared one.
                matches = naming(workspace_id, erased.payload_names())
                for key in (self._streams.workspace(workspace_id), self._streams.shared):
                    await delete_stream_entries(self._redis, key, matches)
        if erased.conversation_ids:
            await self._after_erasure(workspace_id)
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
            key_hashes = await api_key_hashes(session)
            if not await delete_workspace_rows(session, workspace_id):
                return False
        for forget in self._forget:
            done = forget(workspace_id)
            if done is not None:
                await done
        if self._forget_api_keys is not None:
            await self._forget_api_keys(key_hashes)
        ended = self.live.end_workspace(workspace_id) if self.live else 0
        await self._empty_vectors(workspace_id, strict=False)
        if self._redis is not None and self._job_queue is not None:
            # Its queued jobs, before their data goes with its keys (job ids hold the
            # workspace id): a worker taking one meanwhile finds nothing to do.
            await delete_set_members(self._redis, self._job_queue, workspace_id)
        keys = await delete_redis_keys(self._redis, workspace_id) if self._redis else 0
        if self._redis is not None and self._streams is not None:
            # Its own stream went with its keys; its entries in the shared one:
            await delete_stream_entries(self._redis, self._streams.shared, naming(workspace_id, ()))
        await self._after_erasure(workspace_id)
        log.info(
            "workspace deleted",
            extra={"workspace": workspace_id, "streams_ended": ended, "redis_keys": keys},
        )
        return True

    async def _after_erasure(self, workspace_id: str) -> None:
        """Drop the copies of erased data that are not rows: the caches that may hold
        texts, and (SQLite) the write-ahead log's older page images."""
        for purge in self._purge:
            done = purge(workspace_id)
            if done is not None:
                await done
        await self._db.truncate_wal()

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
