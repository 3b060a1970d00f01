"""A small Pinecone data-plane server, in memory, whose failures a test scripts.

It speaks HTTP/1.1 with keep-alive on 127.0.0.1, the JSON shapes the official
``pinecone`` SDK's ``Index``/``AsyncIndex`` send and read (captured from the SDK,
API version 2026-07) for a dense index with the cosine metric:

    POST /vectors/upsert          {"vectors": [{"id", "values", "metadata"?}], "namespace"?}
                                  -> {"upsertedCount": n}
    POST /query                   {"topK", "vector" | "id", "namespace"?, "filter"?,
                                   "includeValues", "includeMetadata"}
                                  -> {"matches": [{"id", "score", "values", "metadata"?}],
                                      "namespace", "usage": {"readUnits"}}
    POST /vectors/delete          {"namespace", "ids" | "deleteAll" | "filter"} -> {}
    POST /describe_index_stats    {} -> {"namespaces": {ns: {"vectorCount"}}, "dimension",
                                         "indexFullness", "totalVectorCount", "metric", ...}

Requests without the right ``Api-Key`` get 401. Errors are ``{"code", "message",
"details"}`` bodies, as Pinecone's gateway sends. Like the real service it
rejects a dimension mismatch, more than 1,000 vectors or ids in one request, and
a delete in a namespace that does not exist (404); ``deleteAll`` deletes the
namespace itself. Filters support ``$eq``,
``$ne``, ``$in``, ``$nin``, ``$exists``, ``$gt``/``$gte``/``$lt``/``$lte``,
``$and``, ``$or`` and the implicit ``{"field": value}`` and multi-key AND; a
list-valued field matches when any element does. The default namespace is
``"__default__"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_NAMESPACE = "__default__"
MAX_VECTORS_PER_UPSERT = 1000
MAX_IDS_PER_DELETE = 1000
MAX_TOP_K = 10_000

# gRPC status codes that Pinecone puts in its JSON error bodies.
_GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 503: 14}


@dataclass
class Failure:
    """One scripted failed response."""

    status: int = 503
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"retry-after": "0"})


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received: float
    status: int = 0  # what the server answered


@dataclass
class Record:
    values: np.ndarray[Any, np.dtype[np.float64]]
    metadata: dict[str, Any]


class PineconeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FakePinecone:
    def __init__(self, api_key: str = "test-key", dimension: int | None = None) -> None:
        self.api_key = api_key
        self.dimension = dimension  # fixed by the first upsert when None
        self.namespaces: dict[str, dict[str, Record]] = {}
        self.requests: list[Seen] = []
        self.failures: deque[Failure] = deque()
        self.delay = 0.0  # seconds before answering each request
        # Namespaces describe_index_stats leaves out, as the real one does for a
        # while after a write (its counts are eventually consistent).
        self.unlisted: set[str] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(
        self, count: int, status: int = 503, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (by default with
        ``Retry-After: 0``, so the SDK's own retries do not sleep)."""
        for _ in range(count):
            failure = Failure(status=status)
            if headers is not None:
                failure.headers = dict(headers)
            self.failures.append(failure)

    def requests_to(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def ids(self, namespace: str) -> set[str]:
        return set(self.namespaces.get(namespace, {}))

    async def start(self) -> FakePinecone:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._stopping = True
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakePinecone:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            keep_alive = True
            while keep_alive:
                keep_alive = await self._one_request(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # stop() ends idle keep-alive connections; end normally, or asyncio
            # logs the cancelled connection task as an unhandled exception.
            if not self._stopping:
                raise
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        path = target.split("?", 1)[0]
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        keep_alive = headers.get("connection", "").lower() != "close"
        seen = Seen(method, path, headers, {}, time.monotonic())
        self.requests.append(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        status, body, extra = self._dispatch(seen, raw)
        seen.status = status
        data = json.dumps(body).encode()
        head_out = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(data)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            + ("" if keep_alive else "connection: close\r\n")
            + "\r\n"
        )
        writer.write(head_out.encode("latin-1") + data)
        await writer.drain()
        return keep_alive

    def _dispatch(self, seen: Seen, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            seen.body = body
        if self.failures:
            failure = self.failures.popleft()
            body = failure.body or _error(failure.status, f"scripted status {failure.status}")
            return failure.status, body, failure.headers
        if seen.headers.get("api-key") != self.api_key:
            return 401, _error(401, "Invalid API Key"), {}
        routes = {
            "/vectors/upsert": self._upsert,
            "/query": self._query,
            "/vectors/delete": self._delete,
            "/describe_index_stats": self._stats,
        }
        handler = routes.get(seen.path)
        if handler is None:
            return 404, _error(404, f"no route {seen.path}"), {}
        if seen.method != "POST":
            return 405, _error(400, f"{seen.method} is not allowed on {seen.path}"), {}
        if not isinstance(body, dict):
            return 400, _error(400, "the request body must be a JSON object"), {}
        try:
            return 200, handler(body), {}
        except PineconeError as exc:
            return exc.status, _error(exc.status, exc.message), {}

    # -- the data plane ----------------------------------------------------------

    def _upsert(self, body: dict[str, Any]) -> dict[str, Any]:
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise PineconeError(400, "vectors must be a non-empty list")
        if len(vectors) > MAX_VECTORS_PER_UPSERT:
            raise PineconeError(
                400, f"an upsert holds at most {MAX_VECTORS_PER_UPSERT} vectors, got {len(vectors)}"
            )
        records: dict[str, Record] = {}
        for item in vectors:
            if not isinstance(item, dict):
                raise PineconeError(400, "each vector must be an object")
            id_ = item.get("id")
            if not isinstance(id_, str) or not id_ or not id_.isascii():
                raise PineconeError(400, f"invalid vector id {id_!r}")
            values = self._dense(item.get("values"))
            metadata = item.get("metadata") or {}
            _check_metadata(metadata)
            records[id_] = Record(values, {k: v for k, v in metadata.items() if v is not None})
        namespace = self.namespaces.setdefault(_namespace(body), {})
        namespace.update(records)
        return {"upsertedCount": len(records)}

    def _dense(self, values: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
        if not isinstance(values, list) or not values:
            raise PineconeError(400, "values must be a non-empty list of numbers")
        array = np.array(values)
        if array.ndim != 1 or array.dtype.kind not in "iuf":
            raise PineconeError(400, "values must be numbers")
        if self.dimension is None:
            self.dimension = len(values)
        if len(values) != self.dimension:
            raise PineconeError(
                400,
                f"Vector dimension {len(values)} does not match "
                f"the dimension of the index {self.dimension}",
            )
        array = array.astype(np.float64)
        if not np.any(array):
            raise PineconeError(
                400, "Dense vectors must contain at least one non-zero value (metric cosine)"
            )
        return array

    def _query(self, body: dict[str, Any]) -> dict[str, Any]:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise PineconeError(400, f"topK must be between 1 and {MAX_TOP_K}, got {top_k!r}")
        name = _namespace(body)
        records = self.namespaces.get(name, {})
        if "vector" in body and "id" in body:
            raise PineconeError(400, "give either vector or id, not both")
        if "id" in body:
            stored = records.get(body["id"])
            if stored is None:
                return {"matches": [], "namespace": name, "usage": {"readUnits": 1}}
            query = stored.values
        elif "vector" in body:
            query = self._dense(body["vector"])
        else:
            raise PineconeError(400, "a query needs a vector or an id")
        criteria = body.get("filter")
        if criteria is not None and not isinstance(criteria, dict):
            raise PineconeError(400, "filter must be an object")
        candidates = [
            (id_, record)
            for id_, record in records.items()
            if not criteria or _matches(record.metadata, criteria)
        ]
        scored = [(_cosine(query, record.values), id_, record) for id_, record in candidates]
        scored.sort(key=lambda hit: (-hit[0], hit[1]))
        matches = []
        for score, id_, record in scored[:top_k]:
            match: dict[str, Any] = {"id": id_, "score": score, "values": []}
            if body.get("includeValues"):
                match["values"] = record.values.tolist()
            if body.get("includeMetadata") and record.metadata:
                match["metadata"] = record.metadata
            matches.append(match)
        return {"matches": matches, "namespace": name, "usage": {"readUnits": 1}}

    def _delete(self, body: dict[str, Any]) -> dict[str, Any]:
        ids, delete_all, criteria = body.get("ids"), body.get("deleteAll"), body.get("filter")
        if sum(x is not None and x is not False for x in (ids, delete_all, criteria)) != 1:
            raise PineconeError(400, "give exactly one of ids, deleteAll or filter")
        name = _namespace(body)
        records = self.namespaces.get(name)
        if records is None:
            raise PineconeError(404, "Namespace not found")
        if delete_all:
            # As Pinecone documents: deleting all records of a namespace deletes it.
            del self.namespaces[name]
        elif ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise PineconeError(400, "ids must be a list of strings")
            if len(ids) > MAX_IDS_PER_DELETE:
                raise PineconeError(400, f"a delete holds at most {MAX_IDS_PER_DELETE} ids")
            for id_ in ids:
                records.pop(id_, None)
        else:
            if not isinstance(criteria, dict) or not criteria:
                raise PineconeError(400, "Delete with empty metadata filter is not allowed")
            for id_ in [i for i, r in records.items() if _matches(r.metadata, criteria)]:
                del records[id_]
        return {}

    def _stats(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("filter"):
            raise PineconeError(400, "describe_index_stats does not take a filter")
        counts = {
            name: len(records)
            for name, records in self.namespaces.items()
            if name not in self.unlisted
        }
        return {
            "namespaces": {name: {"vectorCount": n} for name, n in counts.items()},
            "dimension": self.dimension or 0,
            "indexFullness": 0.0,
            "totalVectorCount": sum(counts.values()),
            "metric": "cosine",
            "vectorType": "dense",
        }


def _namespace(body: dict[str, Any]) -> str:
    name = body.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(name, str):
        raise PineconeError(400, "namespace must be a string")
    return name


def _error(status: int, message: str) -> dict[str, Any]:
    return {"code": _GRPC_CODE.get(status, 2), "message": message, "details": []}


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise PineconeError(400, "metadata must be an object")
    for key, value in metadata.items():
        if value is None or isinstance(value, str | bool | int | float):
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            continue
        raise PineconeError(
            400,
            "Metadata value must be a string, number, boolean or list of strings, "
            f"got {json.dumps(value)[:16]!r} for field {key!r}",
        )


def _cosine(
    a: np.ndarray[Any, np.dtype[np.float64]], b: np.ndarray[Any, np.dtype[np.float64]]
) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _matches(metadata: dict[str, Any], criteria: dict[str, Any]) -> bool:
    """Whether ``metadata`` passes a Pinecone filter expression (all keys must hold)."""
    for key, condition in criteria.items():
        if key == "$and":
            if not all(_matches(metadata, c) for c in _clauses(key, condition)):
                return False
        elif key == "$or":
            if not any(_matches(metadata, c) for c in _clauses(key, condition)):
                return False
        elif key.startswith("$"):
            raise PineconeError(400, f"unknown top-level operator {key}")
        elif isinstance(condition, dict):
            for op, operand in condition.items():
                if not _field_matches(metadata, key, op, operand):
                    return False
        elif not _field_matches(metadata, key, "$eq", condition):
            return False
    return True


def _clauses(op: str, condition: Any) -> list[dict[str, Any]]:
    if not isinstance(condition, list) or not all(isinstance(c, dict) for c in condition):
        raise PineconeError(400, f"{op} takes a list of filters")
    return condition


def _field_matches(metadata: dict[str, Any], key: str, op: str, operand: Any) -> bool:
    present = key in metadata
    value = metadata.get(key)
    values = value if isinstance(value, list) else [value] if present else []
    if op == "$exists":
        return present == bool(operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise PineconeError(400, f"{op} takes a list")
        hit = any(v in operand for v in values)
        return hit if op == "$in" else not hit
    if op == "$eq":
        return operand in values
    if op == "$ne":
        return operand not in values
    comparisons = {
        "$gt": lambda v: v > operand,
        "$gte": lambda v: v >= operand,
        "$lt": lambda v: v < operand,
        "$lte": lambda v: v <= operand,
    }
    if op in comparisons:
        if not isinstance(operand, int | float) or isinstance(operand, bool):
            raise PineconeError(400, f"{op} takes a number")
        return any(
            isinstance(v, int | float) and not isinstance(v, bool) and comparisons[op](v)
            for v in values
        )
    raise PineconeError(400, f"unknown operator {op}")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
