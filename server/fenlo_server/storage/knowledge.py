"""Repositories of the knowledge base: documents, their passages and vectors, and
curated answers. Like every repository, each is built on a workspace session."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server import names
from fenlo_server.events import types as events
from fenlo_server.ids import new_id
from fenlo_server.knowledge.types import (
    ChunkDraft,
    CuratedEntry,
    IndexedChunk,
    KnowledgeSnapshot,
    Matrix,
    Section,
    Vector,
)
from fenlo_server.storage.models import (
    CuratedAnswerRow,
    DocumentBlobRow,
    DocumentRow,
    KbChunkRow,
    KbSectionRow,
    KbVectorRow,
    WorkspaceRow,
    utcnow,
)
from fenlo_server.storage.outbox import append_events
from fenlo_server.storage.repositories import DuplicateRequest, workspace_of


def vector_bytes(vector: Vector) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def vector_from(data: bytes) -> Vector:
    return np.frombuffer(data, dtype=np.float32)


async def bump_kb_version(session: AsyncSession, workspace_id: str) -> None:
    """Mark the workspace's knowledge base changed (in the caller's transaction)."""
    await session.execute(
        update(WorkspaceRow)
        .where(WorkspaceRow.id == workspace_id)
        .values(kb_version=WorkspaceRow.kb_version + 1)
    )


@dataclass(frozen=True, slots=True)
class DocumentFilter:
    status: str | None = None
    tag: str | None = None


class DocumentRepository:
    """One workspace's documents and their uploaded bytes."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.workspace_id = workspace_of(session)

    async def create(
        self,
        *,
        title: str,
        source_uri: str,
        mime_type: str,
        tags: list[str],
        content: bytes,
        content_sha256: str,
        request_id: str | None = None,
        request_hash: str | None = None,
    ) -> DocumentRow:
        now = utcnow()
        row = DocumentRow(
            id=new_id(),
            workspace_id=self.workspace_id,
            title=title,
            source_uri=source_uri,
            mime_type=mime_type,
            tags=tags,
            status="PENDING",
            failure_reason="",
            failure_message="",
            detected_type="",
            size_bytes=len(content),
            content_sha256=content_sha256,
            chunk_count=0,
            embedding_models=[],
            generation=1,
            attempts=0,
            request_id=request_id,
            request_hash=request_hash,
            create_time=now,
            update_time=now,
        )
        self._session.add(row)
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise DuplicateRequest from exc
        self._session.add(
            DocumentBlobRow(document_id=row.id, workspace_id=self.workspace_id, content=content)
        )
        await self._session.flush()
        return row

    async def get(self, document_id: str) -> DocumentRow | None:
        result = await self._session.execute(
            select(DocumentRow).where(DocumentRow.id == document_id)
        )
        return result.scalar_one_or_none()

    async def find_by_request_id(self, request_id: str) -> DocumentRow | None:
        result = await self._session.execute(
            select(DocumentRow).where(DocumentRow.request_id == request_id)
        )
        return result.scalar_one_or_none()

    async def content(self, document_id: str) -> bytes | None:
        result = await self._session.execute(
            select(DocumentBlobRow.content).where(DocumentBlobRow.document_id == document_id)
        )
        return result.scalar_one_or_none()

    async def list_page(
        self, *, filters: DocumentFilter, limit: int, before_id: str | None
    ) -> list[DocumentRow]:
        query = select(DocumentRow).order_by(DocumentRow.id.desc())
        if filters.status is not None:
            query = query.where(DocumentRow.status == filters.status)
        if before_id is not None:
            query = query.where(DocumentRow.id < before_id)
        if filters.tag is None:
            return list((await self._session.execute(query.limit(limit))).scalars())
        # Tags are a JSON list: filter in Python over a bounded scan.
        rows: list[DocumentRow] = []
        batch = max(limit * 4, 200)
        while len(rows) < limit:
            page = list((await self._session.execute(query.limit(batch))).scalars())
            rows.extend(r for r in page if filters.tag in r.tags)
            if len(page) < batch:
                break
            query = query.where(DocumentRow.id < page[-1].id)
        return rows[:limit]

    async def delete(self, document_id: str) -> list[str] | None:
        """Delete the document (its passages and vectors cascade); return its chunk ids."""
        row = await self.get(document_id)
        if row is None:
            return None
        chunk_ids = list(
            (
                await self._session.execute(
                    select(KbChunkRow.id).where(KbChunkRow.document_id == document_id)
                )
            ).scalars()
        )
        await self._session.execute(delete(DocumentRow).where(DocumentRow.id == document_id))
        await bump_kb_version(self._session, self.workspace_id)
        await append_events(
            self._session,
            [
                events.Event(
                    events.DOCUMENT_DELETED,
                    {"document": names.document(self.workspace_id, document_id)},
                )
            ],
        )
        return chunk_ids

    async def request_reindex(self, document_id: str) -> DocumentRow | None:
        row = await self.get(document_id)
        if row is None:
            return None
        row.generation += 1
        row.status = "PENDING"
        row.failure_reason = ""
        row.failure_message = ""
        row.attempts = 0
        row.lease_until = None
        row.update_time = utcnow()
        await self._session.flush()
        return row

    async def claim(self, document_id: str, generation: int, lease: timedelta) -> bool:
        """Take the document for processing, unless someone else holds a live lease."""
        now = utcnow()
        result = await self._session.execute(
            update(DocumentRow)
            .where(
                DocumentRow.id == document_id,
                DocumentRow.generation == generation,
                or_(
                    DocumentRow.status == "PENDING",
                    (DocumentRow.status == "PROCESSING") & (DocumentRow.lease_until < now),
                ),
            )
            .values(
                status="PROCESSING",
                attempts=DocumentRow.attempts + 1,
                lease_until=now + lease,
                update_time=now,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def fail(self, document_id: str, generation: int, reason: str, message: str) -> bool:
        result = await self._session.execute(
            update(DocumentRow)
            .where(DocumentRow.id == document_id, DocumentRow.generation == generation)
            .values(
                status="FAILED",
                failure_reason=reason,
                failure_message=message[:2000],
                lease_until=None,
                update_time=utcnow(),
            )
        )
        failed = bool(result.rowcount)  # type: ignore[attr-defined]
        if failed:
            await append_events(
                self._session,
                [
                    events.Event(
                        events.DOCUMENT_FAILED,
                        {
                            "document": names.document(self.workspace_id, document_id),
                            "generation": generation,
                            "reason": reason,
                        },
                    )
                ],
            )
        return failed

    async def complete(
        self,
        document_id: str,
        generation: int,
        *,
        detected_type: str,
        title: str,
        sections: list[Section],
        chunks: list[ChunkDraft],
        chunk_ids: list[str],
        embed_texts: list[str],
        vectors: dict[str, Matrix],
    ) -> list[str] | None:
        """Replace the document's passages and mark it READY, all in this transaction.

        Returns the ids of the passages it replaced, or None when the document
        was deleted or reindexed meanwhile (the work is then discarded).
        """
        row = await self.get(document_id)
        if row is None or row.generation != generation or row.status != "PROCESSING":
            return None
        replaced = list(
            (
                await self._session.execute(
                    select(KbChunkRow.id).where(KbChunkRow.document_id == document_id)
                )
            ).scalars()
        )
        await self._session.execute(
            delete(KbSectionRow).where(KbSectionRow.document_id == document_id)
        )
        ws = self.workspace_id
        section_ids = {s.ordinal: new_id() for s in sections}
        self._session.add_all(
            KbSectionRow(
                id=section_ids[s.ordinal],
                workspace_id=ws,
                document_id=document_id,
                ordinal=s.ordinal,
                heading_path=list(s.heading_path),
                text=s.text,
            )
            for s in sections
        )
        await self._session.flush()  # sections first: passages refer to them
        self._session.add_all(
            KbChunkRow(
                id=chunk_id,
                workspace_id=ws,
                document_id=document_id,
                section_id=section_ids[chunk.section],
                ordinal=chunk.ordinal,
                text=chunk.text,
                embed_text=embed_text,
                token_count=chunk.token_count,
            )
            for chunk_id, chunk, embed_text in zip(chunk_ids, chunks, embed_texts, strict=True)
        )
        await self._session.flush()
        self._session.add_all(
            KbVectorRow(
                chunk_id=chunk_id, model=model, workspace_id=ws, vector=vector_bytes(matrix[i])
            )
            for model, matrix in vectors.items()
            for i, chunk_id in enumerate(chunk_ids)
        )
        if title and not row.title:
            row.title = title[:300]
        row.status = "READY"
        row.detected_type = detected_type
        row.chunk_count = len(chunks)
        row.embedding_models = sorted(vectors)
        row.failure_reason = ""
        row.failure_message = ""
        row.lease_until = None
        row.update_time = utcnow()
        await self._session.flush()
        await bump_kb_version(self._session, ws)
        await append_events(
            self._session,
            [
                events.Event(
                    events.DOCUMENT_READY,
                    {
                        "document": names.document(ws, document_id),
                        "generation": generation,
                        "chunk_count": len(chunks),
                    },
                )
            ],
        )
        return replaced


class CuratedAnswerRepository:
    """One workspace's curated answers."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.workspace_id = workspace_of(session)

    async def create(
        self,
        *,
        question: str,
        answer: str,
        tags: list[str],
        vectors: dict[str, Vector],
        request_id: str | None = None,
        request_hash: str | None = None,
    ) -> CuratedAnswerRow:
        now = utcnow()
        row = CuratedAnswerRow(
            id=new_id(),
            workspace_id=self.workspace_id,
            question=question,
            answer=answer,
            tags=tags,
            vectors=encode_vectors(vectors),
            request_id=request_id,
            request_hash=request_hash,
            create_time=now,
            update_time=now,
        )
        self._session.add(row)
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise DuplicateRequest from exc
        await bump_kb_version(self._session, self.workspace_id)
        return row

    async def get(self, answer_id: str) -> CuratedAnswerRow | None:
        result = await self._session.execute(
            select(CuratedAnswerRow).where(CuratedAnswerRow.id == answer_id)
        )
        return result.scalar_one_or_none()

    async def find_by_request_id(self, request_id: str) -> CuratedAnswerRow | None:
        result = await self._session.execute(
            select(CuratedAnswerRow).where(CuratedAnswerRow.request_id == request_id)
        )
        return result.scalar_one_or_none()

    async def list_page(self, *, limit: int, before_id: str | None) -> list[CuratedAnswerRow]:
        query = select(CuratedAnswerRow).order_by(CuratedAnswerRow.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(CuratedAnswerRow.id < before_id)
        return list((await self._session.execute(query)).scalars())

    async def save(self, row: CuratedAnswerRow) -> CuratedAnswerRow:
        row.update_time = utcnow()
        await self._session.flush()
        await bump_kb_version(self._session, self.workspace_id)
        return row

    async def delete(self, answer_id: str) -> bool:
        result = await self._session.execute(
            delete(CuratedAnswerRow).where(CuratedAnswerRow.id == answer_id)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            await bump_kb_version(self._session, self.workspace_id)
            return True
        return False


def encode_vectors(vectors: dict[str, Vector]) -> dict[str, str]:
    return {m: base64.b64encode(vector_bytes(v)).decode() for m, v in vectors.items()}


def decode_vectors(stored: dict[str, Any]) -> dict[str, Vector]:
    return {m: vector_from(base64.b64decode(v)) for m, v in stored.items()}


class SqlKnowledgeStore:
    """Loads a workspace's knowledge for the in-memory search index."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def version(self, workspace_id: str) -> int | None:
        async with self._db.workspace(workspace_id) as session:
            result = await session.execute(
                select(WorkspaceRow.kb_version).where(WorkspaceRow.id == workspace_id)
            )
            value = result.scalar_one_or_none()
        return None if value is None else int(value)

    async def load(self, workspace_id: str, models: list[str]) -> KnowledgeSnapshot:
        async with self._db.workspace(workspace_id) as session:
            version = (
                await session.execute(
                    select(WorkspaceRow.kb_version).where(WorkspaceRow.id == workspace_id)
                )
            ).scalar_one_or_none() or 0
            documents = {
                d.id: d
                for d in (
                    await session.execute(select(DocumentRow).where(DocumentRow.chunk_count > 0))
                ).scalars()
            }
            sections = {
                row[0]: (row[1], tuple(row[2]))
                for row in await session.execute(
                    select(KbSectionRow.id, KbSectionRow.text, KbSectionRow.heading_path)
                )
            }
            chunks: dict[str, IndexedChunk] = {}
            for row in (
                await session.execute(select(KbChunkRow).order_by(KbChunkRow.id))
            ).scalars():
                document = documents.get(row.document_id)
                section = sections.get(row.section_id)
                if document is None or section is None:
                    continue
                chunks[row.id] = IndexedChunk(
                    id=row.id,
                    document_id=row.document_id,
                    section_id=row.section_id,
                    text=row.text,
                    embed_text=row.embed_text,
                    heading_path=section[1],
                    title=document.title,
                    source_uri=document.source_uri,
                    tags=tuple(document.tags),
                )
            if models and chunks:
                result = await session.execute(
                    select(KbVectorRow.chunk_id, KbVectorRow.model, KbVectorRow.vector).where(
                        KbVectorRow.model.in_(models)
                    )
                )
                for chunk_id, model, data in result:
                    chunk = chunks.get(chunk_id)
                    if chunk is not None:
                        chunk.vectors[model] = vector_from(data)
            curated = [
                CuratedEntry(
                    row.id, row.question, row.answer, tuple(row.tags), decode_vectors(row.vectors)
                )
                for row in (await session.execute(select(CuratedAnswerRow))).scalars()
            ]
        return KnowledgeSnapshot(
            version=int(version),
            chunks=list(chunks.values()),
            sections={sid: text for sid, (text, _) in sections.items()},
            curated=curated,
        )


async def count_chunks(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(KbChunkRow))).scalar_one())


async def stale_documents(session: AsyncSession, now: datetime) -> list[tuple[str, str, int]]:
    """(workspace, document, generation) of documents whose processing should be
    (re)started in any workspace: waiting for more than 30 s, or whose lease ran out.
    Needs an unscoped session: the ingestion sweeper looks at every workspace."""
    result = await session.execute(
        select(DocumentRow.workspace_id, DocumentRow.id, DocumentRow.generation).where(
            or_(
                (DocumentRow.status == "PROCESSING") & (DocumentRow.lease_until < now),
                (DocumentRow.status == "PENDING")
                & (DocumentRow.update_time < now - timedelta(seconds=30)),
            )
        )
    )
    return [(row[0], row[1], row[2]) for row in result]


async def outdated_documents(session: AsyncSession, models: list[str]) -> list[tuple[str, str]]:
    """(workspace, document) of READY documents embedded with other models than
    ``models`` (after the configured embedders changed). Needs an unscoped session."""
    result = await session.execute(
        select(DocumentRow.workspace_id, DocumentRow.id, DocumentRow.embedding_models).where(
            DocumentRow.status == "READY"
        )
    )
    wanted = sorted(models)
    return [(row[0], row[1]) for row in result if sorted(row[2]) != wanted]
