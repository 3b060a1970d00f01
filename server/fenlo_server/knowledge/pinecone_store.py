"""Pinecone as the vector store: one namespace per workspace and embedding model.

Vectors of workspace ``w`` made by model ``m`` live in the namespace
``f"{namespace_prefix}{w}:{m}"`` of one dense, cosine index, so two workspaces or
two models never share a namespace. Every record also carries ``workspace`` and
``model`` in its metadata and every query filters on both, and a hit whose
metadata names another workspace is dropped: defence in depth should a namespace
ever be mixed up.

The official SDK (``pip install 'fenlo[pinecone]'``) is imported only when a store
is built, so the server runs without it. Its asyncio data-plane client
(``pinecone.AsyncIndex``, what ``PineconeAsyncio(...).IndexAsyncio(host)`` returns)
speaks HTTP/1.1 JSON through httpx, on the event loop. A host without a scheme
means https; ``http://`` is for a local server.

The SDK retries 408/429/5xx and connection failures by itself (three retries,
jittered backoff, honouring ``Retry-After``); what still fails surfaces here as a
:class:`VectorStoreError` whose ``retryable`` says whether trying again later can
help.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fenlo_server.knowledge.types import Matrix, Vector, VectorHit

if TYPE_CHECKING:
    from pinecone import AsyncIndex

UPSERT_BATCH = 100  # vectors per upsert request (Pinecone's own cap is 1,000 and 2 MB)
DELETE_BATCH = 1000  # ids per delete request (Pinecone's cap)
TOP_K_MAX = 10_000  # Pinecone's largest top_k
NAMESPACE_MAX = 512  # Pinecone's longest namespace name

# A ``tags`` metadata value given as one string holds the tags joined by this
# separator (what the ingestor sends; see :func:`join_tags`); it is stored as a
# list of strings. A tag that itself holds a comma only survives in a list.
TAG_SEPARATOR = ","
RESERVED_METADATA = ("workspace", "model")  # set by the store, not by the caller

_RETRYABLE_STATUSES = frozenset({408, 429})


def join_tags(tags: Sequence[str]) -> str:
    """Tags as one metadata string, for callers whose metadata is ``dict[str, str]``."""
    return TAG_SEPARATOR.join(tags)


class VectorStoreError(Exception):
    """A vector-store call failed; ``retryable`` says whether a later retry can succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        operation: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status  # the HTTP status, when the server answered
        self.operation = operation  # "upsert", "query", "delete", "delete_workspace"


def translate_error(exc: Exception, operation: str) -> VectorStoreError:
    """The :class:`VectorStoreError` for an exception the Pinecone SDK raised."""
    from pinecone.errors.exceptions import (
        ApiError,
        PineconeConnectionError,
        PineconeTimeoutError,
    )

    if isinstance(exc, ApiError):
        status = exc.status_code
        retryable = status in _RETRYABLE_STATUSES or status >= 500
        text = f"Pinecone {operation} failed with HTTP {status}: {exc.message}"
        return VectorStoreError(text, retryable=retryable, status=status, operation=operation)
    if isinstance(exc, PineconeTimeoutError | PineconeConnectionError):
        text = f"Pinecone {operation} could not reach the index: {exc}"
        return VectorStoreError(text, retryable=True, operation=operation)
    # The SDK's validation (PineconeValueError/TypeError), an unparsable response, ...
    text = f"Pinecone {operation} failed: {type(exc).__name__}: {exc}"
    return VectorStoreError(text, retryable=False, operation=operation)


class PineconeVectorStore:
    """The :class:`~fenlo_server.knowledge.types.VectorStore` protocol on a Pinecone index.

    Use it from one event loop (the SDK's connection pool belongs to the loop it
    first ran on) and ``await close()`` when done, or use it as ``async with``.
    """

    def __init__(
        self,
        api_key: str,
        index_host: str,
        namespace_prefix: str = "",
        *,
        timeout: float = 30.0,
    ) -> None:
        if not api_key:
            raise ValueError("a Pinecone API key is required")
        if not index_host:
            raise ValueError("a Pinecone index host is required")
        if ":" in namespace_prefix or not namespace_prefix.isascii():
            raise ValueError("namespace_prefix must be ASCII without ':'")
        try:
            from pinecone import AsyncIndex
        except ImportError as exc:
            raise VectorStoreError(
                "the Pinecone vector store needs the SDK: pip install 'fenlo[pinecone]'",
                retryable=False,
            ) from exc
        self.namespace_prefix = namespace_prefix
        try:
            self._index: AsyncIndex = AsyncIndex(
                host=index_host, api_key=api_key, timeout=timeout, source_tag="fenlo"
            )
        except Exception as exc:
            raise translate_error(exc, "connect") from exc
        # The models this process wrote per workspace: namespaces delete_workspace
        # must empty even before describe_index_stats (eventually consistent) lists them.
        self._models: dict[str, set[str]] = {}

    async def __aenter__(self) -> PineconeVectorStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._index.close()

    def namespace(self, workspace: str, model: str) -> str:
        """The namespace that holds ``workspace``'s vectors of ``model``."""
        if not workspace or ":" in workspace or not workspace.isascii():
            raise ValueError(f"workspace must be non-empty ASCII without ':': {workspace!r}")
        if not model or not model.isascii():
            raise ValueError(f"model must be non-empty ASCII: {model!r}")
        name = f"{self._workspace_prefix(workspace)}{model}"
        if len(name) > NAMESPACE_MAX:
            raise ValueError(f"namespace longer than {NAMESPACE_MAX} characters: {name!r}")
        return name

    def _workspace_prefix(self, workspace: str) -> str:
        return f"{self.namespace_prefix}{workspace}:"

    async def upsert(
        self,
        workspace: str,
        model: str,
        ids: list[str],
        vectors: Matrix,
        metadata: Sequence[Mapping[str, str | Sequence[str]]],
    ) -> None:
        """Write (or overwrite) vectors, ≤ ``UPSERT_BATCH`` per request, in order.

        ``metadata[i]`` goes with ``ids[i]``: string values, or lists of strings;
        ``tags`` may be a list or a :func:`join_tags` string. ``workspace`` and
        ``model`` are set by the store. A failed batch raises; the batches before
        it stay written (upserting again is harmless).
        """
        namespace = self.namespace(workspace, model)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(metadata) != len(ids):
            raise ValueError(
                f"{len(ids)} ids, {len(metadata)} metadata and vectors of shape "
                f"{vectors.shape} do not line up"
            )
        if not ids:
            return
        self._models.setdefault(workspace, set()).add(model)
        for start in range(0, len(ids), UPSERT_BATCH):
            stop = start + UPSERT_BATCH
            values = vectors[start:stop].astype(np.float32, copy=False).tolist()
            records = [
                {"id": id_, "values": row, "metadata": _metadata(workspace, model, meta)}
                for id_, row, meta in zip(
                    ids[start:stop], values, metadata[start:stop], strict=True
                )
            ]
            try:
                await self._index.upsert(vectors=records, namespace=namespace)
            except Exception as exc:
                raise translate_error(exc, "upsert") from exc

    async def delete(self, workspace: str, model: str, ids: list[str]) -> None:
        """Delete vectors by id; ids that are not there are ignored."""
        namespace = self.namespace(workspace, model)
        for start in range(0, len(ids), DELETE_BATCH):
            await self._delete(namespace, ids=ids[start : start + DELETE_BATCH])

    async def delete_workspace(self, workspace: str, models: Sequence[str] = ()) -> None:
        """Empty every namespace of ``workspace``: those the index lists, those this
        process wrote to, and those of ``models``. Other workspaces are untouched."""
        prefix = self._workspace_prefix(workspace)
        namespaces = {
            self.namespace(workspace, m) for m in (*self._models.get(workspace, ()), *models)
        }
        try:
            stats = await self._index.describe_index_stats()
        except Exception as exc:
            raise translate_error(exc, "delete_workspace") from exc
        namespaces.update(ns for ns in stats.namespaces if ns.startswith(prefix))
        for namespace in sorted(namespaces):
            await self._delete(namespace, delete_all=True)
        self._models.pop(workspace, None)

    async def _delete(
        self, namespace: str, *, ids: list[str] | None = None, delete_all: bool = False
    ) -> None:
        from pinecone.errors.exceptions import NotFoundError

        try:
            if delete_all:
                await self._index.delete(delete_all=True, namespace=namespace)
            else:
                await self._index.delete(ids=ids, namespace=namespace)
        except NotFoundError:
            return  # the namespace does not exist: nothing to delete
        except Exception as exc:
            raise translate_error(exc, "delete") from exc

    async def query(
        self,
        workspace: str,
        model: str,
        vector: Vector,
        k: int,
        tag: str | None = None,
    ) -> list[VectorHit]:
        """The ``k`` nearest vectors by cosine similarity, best first, optionally only
        those whose ``tags`` include ``tag``."""
        namespace = self.namespace(workspace, model)
        if k <= 0:
            return []
        query_filter: dict[str, Any] = {
            "workspace": {"$eq": workspace},
            "model": {"$eq": model},
        }
        if tag is not None:
            query_filter["tags"] = {"$in": [tag]}
        try:
            response = await self._index.query(
                top_k=min(k, TOP_K_MAX),
                vector=np.asarray(vector, dtype=np.float32).ravel().tolist(),
                namespace=namespace,
                filter=query_filter,
                include_metadata=True,
            )
        except Exception as exc:
            raise translate_error(exc, "query") from exc
        return [
            VectorHit(id=match.id, score=float(match.score))
            for match in response.matches
            if (match.metadata or {}).get("workspace") == workspace
        ]


def _metadata(
    workspace: str, model: str, given: Mapping[str, str | Sequence[str]]
) -> dict[str, str | list[str]]:
    """One record's metadata as Pinecone stores it: strings and lists of strings."""
    out: dict[str, str | list[str]] = {}
    for key, value in given.items():
        if key in RESERVED_METADATA:
            continue
        if key == "tags":
            tags = value.split(TAG_SEPARATOR) if isinstance(value, str) else list(value)
            tags = list(dict.fromkeys(t for t in tags if t))
            if tags:  # no key at all rather than an empty list: no tag filter matches it
                out["tags"] = tags
        elif isinstance(value, str):
            out[key] = value
        else:
            out[key] = [str(v) for v in value]
    out["workspace"] = workspace
    out["model"] = model
    return out
