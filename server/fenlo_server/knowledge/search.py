"""Hybrid retrieval: BM25 and one vector search per embedding model, fused by
reciprocal rank, one passage per section, plus the curated-answer fast path.

With the default embedders, MiniLM finds English paraphrases and the
multilingual USE model finds passages for questions asked in another
language; BM25 catches exact names, numbers and rare words. Every query runs
against one workspace's own index, so results never cross workspaces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fenlo_server.knowledge.index import IndexManager, WorkspaceIndex
from fenlo_server.knowledge.types import (
    CuratedEntry,
    Embedder,
    SearchHit,
    Vector,
    VectorStore,
)
from fenlo_server.text.words import fold

RRF_K = 60


@dataclass(frozen=True, slots=True)
class CuratedMatch:
    entry: CuratedEntry
    similarity: float


@dataclass(slots=True)
class SearchResults:
    hits: list[SearchHit] = field(default_factory=list)
    curated: CuratedMatch | None = None
    vectors: dict[str, Vector] = field(default_factory=dict)  # the query's, by model


@dataclass(frozen=True, slots=True)
class SearchOptions:
    candidates: int = 50  # how many each retriever contributes before fusion
    curated_threshold: float = 0.80  # cosine of the question vectors that answers directly
    use_bm25: bool = True
    use_vectors: bool = True
    # How much each retriever counts in the fusion ("bm25" or an embedding model id;
    # others count 1). Keywords count less than meaning: on the evaluation set BM25
    # alone misses paraphrases and other languages that the vectors find.
    weights: tuple[tuple[str, float], ...] = (("bm25", 0.25),)


class KnowledgeSearch:
    def __init__(
        self,
        indexes: IndexManager,
        embedders: list[Embedder],
        *,
        external_store: VectorStore | None = None,
        external_model: str | None = None,
        options: SearchOptions | None = None,
    ) -> None:
        self.indexes = indexes
        self.embedders = embedders
        self._external = external_store
        self._external_model = external_model
        self.options = options or SearchOptions()

    async def embed(
        self, query: str, known: Mapping[str, Vector] | None = None
    ) -> dict[str, Vector]:
        """The query's vector from every embedder; those in ``known`` are not recomputed."""
        known = known or {}
        missing = [e for e in self.embedders if e.model not in known]
        vectors = await asyncio.gather(*(e.embed_query(query) for e in missing))
        found = dict(known)
        found.update((e.model, v) for e, v in zip(missing, vectors, strict=True))
        return {e.model: found[e.model] for e in self.embedders}

    async def search(
        self,
        workspace_id: str,
        query: str,
        k: int = 5,
        tag: str | None = None,
        *,
        options: SearchOptions | None = None,
        vectors: Mapping[str, Vector] | None = None,
    ) -> SearchResults:
        """The best ``k`` sections for ``query``. ``vectors``: the query's vectors
        the caller already has (by model), so they are not computed again."""
        options = options or self.options
        index = await self.indexes.get(workspace_id)
        if index is None or index.empty:
            return SearchResults()
        query_vectors = (
            await self.embed(query, vectors) if options.use_vectors or index.curated else {}
        )
        results = SearchResults(
            curated=self._curated(index, query, query_vectors, options), vectors=query_vectors
        )
        if not index.chunks:
            return results
        allowed = index.allowed(tag)
        rankings: dict[str, list[tuple[int, float]]] = {}
        if options.use_bm25:
            rankings["bm25"] = index.bm25.search(query, options.candidates, allowed)
        if options.use_vectors:
            for model, vector in query_vectors.items():
                rankings[model] = await self._vector_ranking(
                    workspace_id,
                    index,
                    model,
                    vector,
                    tag=tag,
                    allowed=allowed,
                    k=options.candidates,
                )
        results.hits = fuse(index, rankings, k, dict(options.weights))
        return results

    async def _vector_ranking(
        self,
        workspace_id: str,
        index: WorkspaceIndex,
        model: str,
        vector: Vector,
        *,
        tag: str | None,
        allowed: npt.NDArray[np.bool_] | None,
        k: int,
    ) -> list[tuple[int, float]]:
        if self._external is not None and model == self._external_model:
            hits = await self._external.query(workspace_id, model, vector, k, tag)
            position = {c.id: i for i, c in enumerate(index.chunks)}
            return [(position[h.id], h.score) for h in hits if h.id in position]
        model_index = index.models.get(model)
        if model_index is None:
            return []
        row_allowed = allowed[model_index.positions] if allowed is not None else None
        return [
            (int(model_index.positions[row]), score)
            for row, score in model_index.index.search(vector, k, row_allowed)
        ]

    def _curated(
        self,
        index: WorkspaceIndex,
        query: str,
        vectors: dict[str, Vector],
        options: SearchOptions,
    ) -> CuratedMatch | None:
        if not index.curated:
            return None
        wanted = _normalise(query)
        for entry in index.curated:
            if _normalise(entry.question) == wanted:
                return CuratedMatch(entry, 1.0)
        best: CuratedMatch | None = None
        for model, (matrix, positions) in index.curated_vectors.items():
            vector = vectors.get(model)
            if vector is None:
                continue
            scores = matrix @ vector
            i = int(np.argmax(scores))
            score = float(scores[i])
            if score >= options.curated_threshold and (best is None or score > best.similarity):
                best = CuratedMatch(index.curated[positions[i]], score)
        return best


def fuse(
    index: WorkspaceIndex,
    rankings: dict[str, list[tuple[int, float]]],
    k: int,
    weights: dict[str, float] | None = None,
) -> list[SearchHit]:
    """Weighted reciprocal-rank fusion; one passage per section; scores scaled to 0..1."""
    weights = weights or {}
    fused: dict[int, float] = {}
    similarity: dict[int, float] = {}
    found_by: dict[int, list[str]] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 1.0)
        for rank, (position, score) in enumerate(ranking):
            fused[position] = fused.get(position, 0.0) + weight / (RRF_K + rank + 1)
            found_by.setdefault(position, []).append(name)
            if name != "bm25":
                similarity[position] = max(similarity.get(position, -1.0), score)
    best_possible = sum(weights.get(n, 1.0) for n in rankings) / (RRF_K + 1) or 1.0
    hits: list[SearchHit] = []
    sections: set[str] = set()
    for position in sorted(fused, key=lambda p: (-fused[p], p)):
        chunk = index.chunks[position]
        if chunk.section_id in sections:
            continue
        sections.add(chunk.section_id)
        hits.append(
            SearchHit(
                chunk=chunk,
                context=index.sections.get(chunk.section_id, chunk.text),
                score=min(fused[position] / best_possible, 1.0),
                similarity=max(similarity.get(position, 0.0), 0.0),
                retrievers=tuple(found_by[position]),
            )
        )
        if len(hits) >= k:
            break
    return hits


def _normalise(text: str) -> str:
    return " ".join(fold(text).replace("?", " ").replace("!", " ").replace(".", " ").split())
