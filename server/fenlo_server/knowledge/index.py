"""Each workspace's in-memory search index, loaded lazily and kept fresh.

The index of a workspace (its passages, BM25, one vector index per embedding
model, its curated answers) is built on first use from the
:class:`KnowledgeStore`. Every change to a knowledge base bumps the
workspace's version in the same transaction, so before a search the manager
compares versions (one small query, at most every ``check_interval``
seconds, or at once after :meth:`IndexManager.invalidate`) and rebuilds the
index when it changed. That keeps every replica and every worker process in
step without any message passing; events only make it faster: with Redis an
:meth:`IndexManager.invalidate` is also published to the other replicas
(``on_invalidate``), which check at once instead of within ``check_interval``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fenlo_server.knowledge.bm25 import Bm25Index
from fenlo_server.knowledge.types import (
    CuratedEntry,
    IndexedChunk,
    KnowledgeSnapshot,
    KnowledgeStore,
    Matrix,
)
from fenlo_server.knowledge.vector_index import VectorIndex


@dataclass
class ModelIndex:
    """The vectors of one model: an index over the passages that have one."""

    index: VectorIndex
    positions: npt.NDArray[np.int64]  # row of the vector index -> position in chunks


@dataclass
class WorkspaceIndex:
    version: int
    chunks: list[IndexedChunk]
    sections: dict[str, str]
    bm25: Bm25Index
    models: dict[str, ModelIndex]
    curated: list[CuratedEntry]
    curated_vectors: dict[str, tuple[Matrix, list[int]]]  # model -> (vectors, curated positions)
    _tag_masks: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.chunks and not self.curated

    def allowed(self, tag: str | None) -> npt.NDArray[np.bool_] | None:
        """Which passages a tag filter lets through (None: all)."""
        if not tag:
            return None
        mask = self._tag_masks.get(tag)
        if mask is None:
            mask = np.fromiter(
                (tag in c.tags for c in self.chunks), dtype=bool, count=len(self.chunks)
            )
            self._tag_masks[tag] = mask
        return mask


def build_index(
    snapshot: KnowledgeSnapshot, models: list[str], ann_threshold: int
) -> WorkspaceIndex:
    """Build the index from a snapshot (CPU work: run it in a thread)."""
    chunks = snapshot.chunks
    model_indexes: dict[str, ModelIndex] = {}
    for model in models:
        positions = [i for i, c in enumerate(chunks) if model in c.vectors]
        if not positions:
            continue
        matrix = np.stack([chunks[i].vectors[model] for i in positions]).astype(np.float32)
        model_indexes[model] = ModelIndex(
            VectorIndex(matrix, ann_threshold=ann_threshold), np.asarray(positions, dtype=np.int64)
        )
    curated_vectors: dict[str, tuple[Matrix, list[int]]] = {}
    for model in models:
        found = [i for i, entry in enumerate(snapshot.curated) if model in entry.vectors]
        if found:
            matrix = np.stack([snapshot.curated[i].vectors[model] for i in found]).astype(
                np.float32
            )
            curated_vectors[model] = (matrix, found)
    return WorkspaceIndex(
        version=snapshot.version,
        chunks=chunks,
        sections=snapshot.sections,
        bm25=Bm25Index([c.embed_text for c in chunks]),
        models=model_indexes,
        curated=snapshot.curated,
        curated_vectors=curated_vectors,
    )


@dataclass
class _Entry:
    index: WorkspaceIndex | None = None
    checked: float = 0.0
    loading: asyncio.Task[WorkspaceIndex | None] | None = None
    invalidations: int = 0


class IndexManager:
    def __init__(
        self,
        store: KnowledgeStore,
        models: list[str],
        *,
        check_interval: float = 1.0,
        ann_threshold: int = 20_000,
        max_workspaces: int = 512,
    ) -> None:
        self._store = store
        self.models = list(models)
        self._check_interval = check_interval
        self._ann_threshold = ann_threshold
        self._max = max_workspaces
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.on_invalidate: Callable[[str], None] | None = None

    async def get(self, workspace_id: str) -> WorkspaceIndex | None:
        """The workspace's current index; None when the workspace does not exist."""
        entry = self._entries.get(workspace_id)
        if entry is None:
            entry = self._entries[workspace_id] = _Entry()
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(workspace_id)
        now = time.monotonic()
        if entry.index is not None and now - entry.checked < self._check_interval:
            return entry.index
        if entry.loading is None:
            entry.loading = asyncio.get_running_loop().create_task(
                self._refresh(workspace_id, entry)
            )
        task = entry.loading
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and entry.loading is task:
                entry.loading = None

    async def _refresh(self, workspace_id: str, entry: _Entry) -> WorkspaceIndex | None:
        invalidations = entry.invalidations
        version = await self._store.version(workspace_id)
        checked = time.monotonic()
        if version is None:
            self._entries.pop(workspace_id, None)
            return None
        if entry.index is None or entry.index.version != version:
            snapshot = await self._store.load(workspace_id, self.models)
            entry.index = await asyncio.to_thread(
                build_index, snapshot, self.models, self._ann_threshold
            )
        if entry.invalidations == invalidations:  # else: changed meanwhile, check again
            entry.checked = checked
        return entry.index

    def invalidate(self, workspace_id: str) -> None:
        """After a change here: check the version before the next search, here and
        (through ``on_invalidate``) on the other replicas."""
        self.check_soon(workspace_id)
        if self.on_invalidate is not None:
            self.on_invalidate(workspace_id)

    def check_soon(self, workspace_id: str) -> None:
        """Check the workspace's version before its next search."""
        entry = self._entries.get(workspace_id)
        if entry is not None:
            entry.checked = 0.0
            entry.invalidations += 1

    def forget(self, workspace_id: str) -> None:
        self._entries.pop(workspace_id, None)
