"""Values and protocols shared by the knowledge-base modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]  # (d,) L2-normalised
Matrix = npt.NDArray[np.float32]  # (n, d), rows L2-normalised

BlockKind = Literal["heading", "paragraph", "list_item", "table_row", "code"]
FailureReason = Literal["unsupported_type", "empty_text", "encrypted", "too_large", "malformed"]


@dataclass(frozen=True, slots=True)
class Block:
    """One structural piece of a parsed document, in reading order."""

    kind: BlockKind
    text: str
    level: int = 0  # heading level (1 = top), or list nesting depth


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    detected_type: str  # a MIME type such as "application/pdf"
    blocks: list[Block]
    title: str | None = None  # a title found in the content (HTML <title>, first H1, PDF info)


class ParseError(Exception):
    """The content cannot become text; ``reason`` tells the user what to do."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Section:
    """A run of the document under one heading path: what the LLM gets as context."""

    ordinal: int
    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """A small passage for matching, inside its section."""

    ordinal: int
    section: int  # the Section.ordinal it belongs to
    text: str  # the passage itself
    token_count: int

    def embed_text(self, title: str, heading_path: tuple[str, ...]) -> str:
        """What is embedded and keyword-indexed: the passage under its title and headings."""
        header = " > ".join(p for p in (title, *heading_path) if p)
        return f"{header}\n{self.text}" if header else self.text


@dataclass(frozen=True, slots=True)
class Chunked:
    sections: list[Section]
    chunks: list[ChunkDraft]


class Embedder(Protocol):
    """Turns text into L2-normalised vectors of ``dimensions`` floats."""

    model: str  # a stable id recorded with every vector, e.g. "minilm-l6-v2-int8"
    dimensions: int

    async def embed_documents(self, texts: list[str]) -> Matrix: ...

    async def embed_query(self, text: str) -> Vector: ...


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: str
    score: float  # cosine similarity


@dataclass(slots=True)
class IndexedChunk:
    """A passage as the search index holds it."""

    id: str
    document_id: str
    section_id: str
    text: str
    embed_text: str
    heading_path: tuple[str, ...]
    title: str
    source_uri: str
    tags: tuple[str, ...] = ()
    vectors: dict[str, Vector] = field(default_factory=dict)  # model -> vector


@dataclass(frozen=True, slots=True)
class SearchHit:
    chunk: IndexedChunk
    context: str  # the section text around the passage
    score: float  # 0..1 from rank fusion: how well it ranks among the retrievers
    similarity: float = 0.0  # the best cosine similarity of a vector retriever (absolute)
    retrievers: tuple[str, ...] = ()  # which retrievers found it ("bm25", a model id)


class VectorStore(Protocol):
    """Where a workspace's vectors of one model live, namespaced by workspace."""

    async def upsert(
        self,
        workspace: str,
        model: str,
        ids: list[str],
        vectors: Matrix,
        metadata: list[dict[str, str]],
    ) -> None: ...

    async def delete(self, workspace: str, model: str, ids: list[str]) -> None: ...

    async def delete_workspace(self, workspace: str, models: Sequence[str] = ()) -> None:
        """Delete every vector of the workspace (of ``models`` and any other)."""
        ...

    async def query(
        self,
        workspace: str,
        model: str,
        vector: Vector,
        k: int,
        tag: str | None = None,
    ) -> list[VectorHit]: ...


@dataclass(frozen=True, slots=True)
class CuratedEntry:
    id: str
    question: str
    answer: str
    tags: tuple[str, ...]
    vectors: dict[str, Vector]


@dataclass(frozen=True, slots=True)
class KnowledgeSnapshot:
    """Everything a workspace's search index is built from, at one version."""

    version: int
    chunks: list[IndexedChunk]
    sections: dict[str, str]  # section id -> text
    curated: list[CuratedEntry]


class KnowledgeStore(Protocol):
    """Where the index loads a workspace's knowledge from (``storage/`` implements it)."""

    async def version(self, workspace_id: str) -> int | None:
        """The workspace's knowledge version; None when the workspace does not exist."""
        ...

    async def load(self, workspace_id: str, models: list[str]) -> KnowledgeSnapshot: ...
