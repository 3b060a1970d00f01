"""Document ingestion: parse, chunk, embed, and store a document's passages.

A job first claims the document (PENDING, or PROCESSING with an expired lease)
for the generation it was queued for. Parsing, chunking and embedding happen
outside any transaction; the passages, their vectors and the READY status are
then written in one transaction, so a crash at any point leaves the document
retryable and never half-indexed and READY. A document that cannot become
text is FAILED with a reason a person can act on; any other error leaves it
PROCESSING until its lease runs out and the sweeper queues it again (FAILED
after ``max_attempts``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Protocol

from fenlo_server import metrics
from fenlo_server.ids import new_id
from fenlo_server.knowledge.chunking import chunk_document
from fenlo_server.knowledge.parsers import parse
from fenlo_server.knowledge.types import Embedder, Matrix, ParseError, VectorStore
from fenlo_server.storage.db import Database
from fenlo_server.storage.knowledge import (
    DocumentRepository,
    outdated_documents,
    stale_documents,
)
from fenlo_server.storage.models import utcnow

log = logging.getLogger("fenlo.ingestion")


@dataclass(frozen=True, slots=True)
class IngestionConfig:
    child_tokens: int = 128
    overlap_tokens: int = 32
    section_tokens: int = 512
    max_text_chars: int = 2_000_000
    lease: timedelta = timedelta(minutes=5)
    max_attempts: int = 3


class JobQueue(Protocol):
    async def enqueue_ingest(
        self, workspace_id: str, document_id: str, generation: int
    ) -> None: ...


class Ingestor:
    def __init__(
        self,
        db: Database,
        embedders: list[Embedder],
        count_tokens: Callable[[str], int],
        config: IngestionConfig | None = None,
        *,
        external_store: VectorStore | None = None,
        external_model: str | None = None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._db = db
        self._embedders = embedders
        self._count_tokens = count_tokens
        self.config = config or IngestionConfig()
        self._external = external_store
        self._external_model = external_model
        self.on_change = on_change

    async def process(self, workspace_id: str, document_id: str, generation: int) -> str:
        """Ingest one document; return what happened (for logs and tests)."""
        started = time.perf_counter()
        async with self._db.workspace(workspace_id) as session:
            repo = DocumentRepository(session)
            if not await repo.claim(document_id, generation, self.config.lease):
                return "skipped"  # done, deleted, reindexed, or another worker holds it
            row = await repo.get(document_id)
            content = await repo.content(document_id)
        assert row is not None
        if content is None or row.attempts > self.config.max_attempts:
            await self._fail(
                workspace_id,
                document_id,
                generation,
                "internal",
                f"processing failed {row.attempts - 1} times; try ReindexDocument later",
            )
            return "failed"
        filename = PurePosixPath(row.source_uri).name if row.source_uri else None
        try:
            parsed = await asyncio.to_thread(
                parse,
                content,
                filename=filename or row.title or None,
                declared_mime=row.mime_type or None,
                max_text_chars=self.config.max_text_chars,
            )
            chunked = await asyncio.to_thread(
                chunk_document,
                parsed,
                count_tokens=self._count_tokens,
                child_tokens=self.config.child_tokens,
                overlap_tokens=self.config.overlap_tokens,
                parent_tokens=self.config.section_tokens,
            )
            if not chunked.chunks:
                raise ParseError("empty_text", "no text could be extracted from the document")
        except ParseError as error:
            await self._fail(workspace_id, document_id, generation, error.reason, error.message)
            return "failed"
        title = row.title or parsed.title or filename or "Untitled"
        headings = {s.ordinal: s.heading_path for s in chunked.sections}
        embed_texts = [c.embed_text(title, headings[c.section]) for c in chunked.chunks]
        vectors: dict[str, Matrix] = {}
        for embedder in self._embedders:
            vectors[embedder.model] = await embedder.embed_documents(embed_texts)
        chunk_ids = [new_id() for _ in chunked.chunks]
        if self._external is not None and self._external_model in vectors:
            # Vectors go out before the commit: a failed commit leaves orphans that
            # no search returns (hits are mapped through the committed passages).
            await self._external.upsert(
                workspace_id,
                self._external_model,
                chunk_ids,
                vectors[self._external_model],
                [{"document_id": document_id, "tags": ",".join(row.tags)}] * len(chunk_ids),
            )
        async with self._db.workspace(workspace_id) as session:
            replaced = await DocumentRepository(session).complete(
                document_id,
                generation,
                detected_type=parsed.detected_type,
                title=title,
                sections=chunked.sections,
                chunks=chunked.chunks,
                chunk_ids=chunk_ids,
                embed_texts=embed_texts,
                vectors=vectors,
            )
        if replaced is None:
            if self._external is not None and self._external_model:
                await self._external.delete(workspace_id, self._external_model, chunk_ids)
            return "superseded"
        if replaced and self._external is not None and self._external_model:
            await self._external.delete(workspace_id, self._external_model, replaced)
        seconds = time.perf_counter() - started
        metrics.INGESTED_CHUNKS.inc(len(chunk_ids))
        log.info(
            "document ready",
            extra={
                "workspace": workspace_id,
                "document": document_id,
                "chunks": len(chunk_ids),
                "seconds": round(seconds, 3),
            },
        )
        self._changed(workspace_id)
        return "ready"

    async def _fail(
        self, workspace_id: str, document_id: str, generation: int, reason: str, message: str
    ) -> None:
        async with self._db.workspace(workspace_id) as session:
            await DocumentRepository(session).fail(document_id, generation, reason, message)
        log.info(
            "document failed",
            extra={"workspace": workspace_id, "document": document_id, "reason": reason},
        )
        self._changed(workspace_id)

    def _changed(self, workspace_id: str) -> None:
        if self.on_change is not None:
            self.on_change(workspace_id)

    async def outdated(self) -> list[tuple[str, str, int]]:
        """Mark documents embedded by other models for reindexing; return the jobs.

        Their old passages stay searchable until the new ones are committed.
        """
        models = [e.model for e in self._embedders]
        async with self._db.unscoped("find documents embedded by other models") as session:
            found = await outdated_documents(session, models)
        jobs = []
        for workspace_id, document_id in found:
            async with self._db.workspace(workspace_id) as session:
                row = await DocumentRepository(session).request_reindex(document_id)
            if row is not None:
                jobs.append((workspace_id, document_id, row.generation))
        if jobs:
            log.info("re-embedding documents for new models", extra={"documents": len(jobs)})
        return jobs

    async def stale(self) -> list[tuple[str, str, int]]:
        async with self._db.unscoped("ingestion sweeper looks at every workspace") as session:
            return await stale_documents(session, utcnow())


class InProcessQueue:
    """The embedded default: an asyncio queue with worker tasks in the server."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        workers: int = 1,
        sweep_seconds: float = 30.0,
        sweep: bool = True,
    ) -> None:
        self._ingestor = ingestor
        self._sweep_enabled = sweep
        self._queue: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
        self._queued: set[tuple[str, str, int]] = set()
        self._workers = workers
        self._sweep_seconds = sweep_seconds
        self._tasks: list[asyncio.Task[None]] = []

    async def enqueue_ingest(self, workspace_id: str, document_id: str, generation: int) -> None:
        key = (workspace_id, document_id, generation)
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()) for _ in range(self._workers)]
        if self._sweep_enabled:
            self._tasks.append(loop.create_task(self._sweep()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            try:
                await self._ingestor.process(*key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ingestion job failed; it will be retried", extra={"job": key})
            finally:
                self._queue.task_done()

    async def _sweep(self) -> None:
        """Re-embed documents of old models once, then requeue documents left behind
        (a crash, a lost job) every ``sweep_seconds``."""
        try:
            for key in await self._ingestor.outdated():
                await self.enqueue_ingest(*key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("could not look for documents to re-embed", exc_info=True)
        while True:
            try:
                for key in await self._ingestor.stale():
                    await self.enqueue_ingest(*key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("ingestion sweep failed", exc_info=True)
            await asyncio.sleep(self._sweep_seconds)

    async def drain(self) -> None:
        """Wait until every queued job has run (tests and tools)."""
        await self._queue.join()
