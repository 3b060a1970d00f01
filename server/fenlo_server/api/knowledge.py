"""KnowledgeService: documents, search and curated answers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

from google.protobuf import empty_pb2
from grpc import aio
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo.v1 import knowledge_pb2, knowledge_pb2_grpc
from fenlo_server import names
from fenlo_server.api.common import (
    Deps,
    Pager,
    authorize_workspace,
    check_text,
    create_once,
    list_by_id,
    request_hash,
    request_id_of,
    to_timestamp,
    update_paths,
)
from fenlo_server.errors import (
    FieldViolation,
    InvalidArgument,
    QuotaViolation,
    Reason,
    ResourceExhausted,
    Violations,
    invalid,
    not_found,
)
from fenlo_server.knowledge.search import SearchResults
from fenlo_server.knowledge.types import CuratedEntry, Vector
from fenlo_server.storage.knowledge import (
    CuratedAnswerRepository,
    DocumentFilter,
    DocumentRepository,
    encode_vectors,
)
from fenlo_server.storage.models import CuratedAnswerRow, DocumentRow

log = logging.getLogger("fenlo.knowledge")
Ctx = aio.ServicerContext[Any, Any]
K = knowledge_pb2
MAX_TAGS = 20
MAX_TAG = 64
MAX_QUERY = 2000
MAX_RESULTS = 50
CURATED_UPDATABLE = ("question", "answer", "tags")


def document_to_proto(row: DocumentRow) -> knowledge_pb2.Document:
    failure = None
    if row.status == "FAILED":
        failure = K.DocumentFailure(
            reason=K.DocumentFailureReason.Value(
                f"DOCUMENT_FAILURE_REASON_{(row.failure_reason or 'internal').upper()}"
            ),
            message=row.failure_message,
        )
    return K.Document(
        name=f"workspaces/{row.workspace_id}/documents/{row.id}",
        title=row.title,
        source_uri=row.source_uri,
        mime_type=row.mime_type,
        tags=row.tags,
        status=K.DocumentStatus.Value(f"DOCUMENT_STATUS_{row.status}"),
        failure=failure,
        detected_type=row.detected_type,
        size_bytes=row.size_bytes,
        chunk_count=row.chunk_count,
        embedding_models=row.embedding_models,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )


def curated_to_proto(
    workspace_id: str, row: CuratedAnswerRow | CuratedEntry
) -> knowledge_pb2.CuratedAnswer:
    answer = K.CuratedAnswer(
        name=f"workspaces/{workspace_id}/curatedAnswers/{row.id}",
        question=row.question,
        answer=row.answer,
        tags=list(row.tags),
    )
    if isinstance(row, CuratedAnswerRow):
        answer.create_time.FromDatetime(row.create_time)
        answer.update_time.FromDatetime(row.update_time)
    return answer


def check_tags(violations: Violations, path: str, tags: list[str]) -> None:
    if len(tags) > MAX_TAGS:
        violations.add(path, f"must have at most {MAX_TAGS} tags")
    for i, tag in enumerate(tags[:MAX_TAGS]):
        if not tag.strip() or len(tag) > MAX_TAG:
            violations.add(f"{path}[{i}]", f"tags must be 1 to {MAX_TAG} characters")


def validate_document_metadata(
    violations: Violations, document: knowledge_pb2.Document, path: str = "document"
) -> None:
    check_text(violations, f"{path}.title", document.title, max_chars=300)
    check_text(violations, f"{path}.source_uri", document.source_uri, max_chars=2048)
    check_text(violations, f"{path}.mime_type", document.mime_type, max_chars=200)
    check_tags(violations, f"{path}.tags", list(document.tags))


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    # Documents

    async def _max_bytes(self, workspace_id: str) -> int:
        info = await self._deps.directory.get(workspace_id)
        if info is None:
            raise not_found("workspace", names.workspace(workspace_id))
        return info.quotas.max_document_bytes

    async def UploadDocument(
        self, request_iterator: AsyncIterator[knowledge_pb2.UploadDocumentRequest], context: Ctx
    ) -> knowledge_pb2.Document:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise _out_of_order("the first message of an upload must be its metadata")
        metadata = first.metadata
        workspace_id = names.workspace_id(metadata.parent, "metadata.parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        validate_document_metadata(violations, metadata.document, "metadata.document")
        violations.raise_if_any()
        request_id = request_id_of(metadata.request_id, "metadata.request_id")
        limit = await self._max_bytes(workspace_id)
        parts: list[bytes] = []
        size = 0
        async for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise _out_of_order("after the metadata, an upload carries only `chunk` messages")
            size += len(message.chunk)
            if size > limit:
                raise _too_large(workspace_id, limit)
            parts.append(message.chunk)
        content = b"".join(parts)
        return await self._create(
            workspace_id, metadata.document, content, request_id, _upload_hash(metadata, content)
        )

    async def ImportText(
        self, request: knowledge_pb2.ImportTextRequest, context: Ctx
    ) -> knowledge_pb2.Document:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        validate_document_metadata(violations, request.document)
        if not request.text.strip():
            violations.add("text", "is required")
        violations.raise_if_any()
        content = request.text.encode()
        limit = await self._max_bytes(workspace_id)
        if len(content) > limit:
            raise _too_large(workspace_id, limit)
        document = K.Document()
        document.CopyFrom(request.document)
        if not document.mime_type:
            document.mime_type = "text/markdown"
        request_id = request_id_of(request.request_id)
        return await self._create(
            workspace_id,
            document,
            content,
            request_id,
            request_hash(request) if request_id else None,
        )

    async def _create(
        self,
        workspace_id: str,
        document: knowledge_pb2.Document,
        content: bytes,
        request_id: str | None,
        digest: str | None,
    ) -> knowledge_pb2.Document:
        if not content:
            raise invalid("chunk", "the document is empty")
        title = document.title or (
            PurePosixPath(document.source_uri).name if document.source_uri else ""
        )

        async def create(session: AsyncSession) -> DocumentRow:
            return await DocumentRepository(session).create(
                title=title,
                source_uri=document.source_uri,
                mime_type=document.mime_type,
                tags=list(dict.fromkeys(document.tags)),
                content=content,
                content_sha256=hashlib.sha256(content).hexdigest(),
                request_id=request_id,
                request_hash=digest,
            )

        row, created = await create_once(
            lambda: self._deps.db.workspace(workspace_id),
            request_id,
            digest,
            lambda session, rid: DocumentRepository(session).find_by_request_id(rid),
            create,
        )
        if created:
            await self._deps.jobs.enqueue_ingest(workspace_id, row.id, row.generation)
        return document_to_proto(row)

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: Ctx
    ) -> knowledge_pb2.Document:
        workspace_id, document_id = names.parse("document", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            row = await DocumentRepository(session).get(document_id)
        if row is None:
            raise not_found("document", request.name)
        return document_to_proto(row)

    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: Ctx
    ) -> knowledge_pb2.ListDocumentsResponse:
        workspace_id = names.workspace_id(request.parent, "parent")
        principal = authorize_workspace(workspace_id)
        violations = Violations()
        if request.status not in K.DocumentStatus.values():
            violations.add("status", "is not a known status")
        check_text(violations, "tag", request.tag, max_chars=MAX_TAG)
        violations.raise_if_any()
        status = (
            K.DocumentStatus.Name(request.status).removeprefix("DOCUMENT_STATUS_")
            if request.status
            else None
        )
        query = {
            "method": "ListDocuments",
            "parent": request.parent,
            "status": status,
            "tag": request.tag or None,
        }
        pager = Pager(self._deps, principal, request.page_size, request.page_token, query)
        async with self._deps.db.workspace(workspace_id) as session:
            rows = await DocumentRepository(session).list_page(
                filters=DocumentFilter(status=status, tag=request.tag or None),
                limit=pager.limit,
                before_id=pager.cursor.get("id"),
            )
        rows, token = pager.finish(rows, lambda row: {"id": row.id})
        return K.ListDocumentsResponse(
            documents=[document_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteDocument(
        self, request: knowledge_pb2.DeleteDocumentRequest, context: Ctx
    ) -> empty_pb2.Empty:
        workspace_id, document_id = names.parse("document", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            chunk_ids = await DocumentRepository(session).delete(document_id)
        if chunk_ids is None:
            raise not_found("document", request.name)
        self._deps.knowledge.indexes.invalidate(workspace_id)
        external = self._deps.external_store
        if external is not None and chunk_ids:
            model = self._deps.knowledge.embedders[0].model
            try:
                await external.delete(workspace_id, model, chunk_ids)
            except Exception:  # the rows are gone: orphaned vectors are never returned
                log.warning("could not delete vectors from the external store", exc_info=True)
        return empty_pb2.Empty()

    async def ReindexDocument(
        self, request: knowledge_pb2.ReindexDocumentRequest, context: Ctx
    ) -> knowledge_pb2.Document:
        workspace_id, document_id = names.parse("document", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            row = await DocumentRepository(session).request_reindex(document_id)
        if row is None:
            raise not_found("document", request.name)
        await self._deps.jobs.enqueue_ingest(workspace_id, row.id, row.generation)
        return document_to_proto(row)

    # Search

    async def SearchKnowledge(
        self, request: knowledge_pb2.SearchKnowledgeRequest, context: Ctx
    ) -> knowledge_pb2.SearchKnowledgeResponse:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        check_text(violations, "query", request.query, max_chars=MAX_QUERY, required=True)
        check_text(violations, "tag", request.tag, max_chars=MAX_TAG)
        if request.page_size < 0:
            violations.add("page_size", "must not be negative")
        violations.raise_if_any()
        k = min(request.page_size or 5, MAX_RESULTS)
        results = await self._deps.knowledge.search(
            workspace_id, request.query, k, request.tag or None
        )
        return search_response(workspace_id, results)

    # Curated answers

    async def _embed(self, question: str) -> dict[str, Vector]:
        return await self._deps.knowledge.embed(question)

    async def CreateCuratedAnswer(
        self, request: knowledge_pb2.CreateCuratedAnswerRequest, context: Ctx
    ) -> knowledge_pb2.CuratedAnswer:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        answer = request.curated_answer
        violations = Violations()
        _validate_curated(violations, answer, ("question", "answer", "tags"))
        violations.raise_if_any()
        request_id = request_id_of(request.request_id)
        digest = request_hash(request) if request_id else None
        if await self._deps.directory.get(workspace_id) is None:
            raise not_found("workspace", request.parent)
        vectors = await self._embed(answer.question)

        async def create(session: AsyncSession) -> CuratedAnswerRow:
            return await CuratedAnswerRepository(session).create(
                question=answer.question,
                answer=answer.answer,
                tags=list(dict.fromkeys(answer.tags)),
                vectors=vectors,
                request_id=request_id,
                request_hash=digest,
            )

        row, created = await create_once(
            lambda: self._deps.db.workspace(workspace_id),
            request_id,
            digest,
            lambda session, rid: CuratedAnswerRepository(session).find_by_request_id(rid),
            create,
        )
        if created:
            self._deps.knowledge.indexes.invalidate(workspace_id)
        return curated_to_proto(workspace_id, row)

    async def GetCuratedAnswer(
        self, request: knowledge_pb2.GetCuratedAnswerRequest, context: Ctx
    ) -> knowledge_pb2.CuratedAnswer:
        workspace_id, answer_id = names.parse("curated_answer", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            row = await CuratedAnswerRepository(session).get(answer_id)
        if row is None:
            raise not_found("curated answer", request.name)
        return curated_to_proto(workspace_id, row)

    async def ListCuratedAnswers(
        self, request: knowledge_pb2.ListCuratedAnswersRequest, context: Ctx
    ) -> knowledge_pb2.ListCuratedAnswersResponse:
        workspace_id, rows, token = await list_by_id(
            self._deps, request, "ListCuratedAnswers", CuratedAnswerRepository
        )
        return K.ListCuratedAnswersResponse(
            curated_answers=[curated_to_proto(workspace_id, r) for r in rows],
            next_page_token=token,
        )

    async def UpdateCuratedAnswer(
        self, request: knowledge_pb2.UpdateCuratedAnswerRequest, context: Ctx
    ) -> knowledge_pb2.CuratedAnswer:
        answer = request.curated_answer
        workspace_id, answer_id = names.parse("curated_answer", answer.name, "curated_answer.name")
        authorize_workspace(workspace_id)
        paths = update_paths(request.update_mask, answer, CURATED_UPDATABLE, nested=False)
        violations = Violations()
        _validate_curated(violations, answer, tuple(paths))
        violations.raise_if_any()
        vectors = await self._embed(answer.question) if "question" in paths else None
        async with self._deps.db.workspace(workspace_id) as session:
            repo = CuratedAnswerRepository(session)
            row = await repo.get(answer_id)
            if row is None:
                raise not_found("curated answer", answer.name)
            if "question" in paths and vectors is not None:
                row.question = answer.question
                row.vectors = encode_vectors(vectors)
            if "answer" in paths:
                row.answer = answer.answer
            if "tags" in paths:
                row.tags = list(dict.fromkeys(answer.tags))
            row = await repo.save(row)
        self._deps.knowledge.indexes.invalidate(workspace_id)
        return curated_to_proto(workspace_id, row)

    async def DeleteCuratedAnswer(
        self, request: knowledge_pb2.DeleteCuratedAnswerRequest, context: Ctx
    ) -> empty_pb2.Empty:
        workspace_id, answer_id = names.parse("curated_answer", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            deleted = await CuratedAnswerRepository(session).delete(answer_id)
        if not deleted:
            raise not_found("curated answer", request.name)
        self._deps.knowledge.indexes.invalidate(workspace_id)
        return empty_pb2.Empty()


def search_response(
    workspace_id: str, results: SearchResults
) -> knowledge_pb2.SearchKnowledgeResponse:
    response = K.SearchKnowledgeResponse(
        results=[
            K.SearchResult(
                passage=hit.chunk.text,
                context=hit.context,
                heading_path=list(hit.chunk.heading_path),
                document=f"workspaces/{workspace_id}/documents/{hit.chunk.document_id}",
                title=hit.chunk.title,
                source_uri=hit.chunk.source_uri,
                score=round(hit.score, 6),
            )
            for hit in results.hits
        ]
    )
    if results.curated is not None:
        response.curated_answer.CopyFrom(curated_to_proto(workspace_id, results.curated.entry))
    return response


def _validate_curated(
    violations: Violations, answer: knowledge_pb2.CuratedAnswer, fields: tuple[str, ...]
) -> None:
    if "question" in fields:
        check_text(
            violations, "curated_answer.question", answer.question, max_chars=1000, required=True
        )
    if "answer" in fields:
        check_text(
            violations, "curated_answer.answer", answer.answer, max_chars=8000, required=True
        )
    if "tags" in fields:
        check_tags(violations, "curated_answer.tags", list(answer.tags))


def _upload_hash(metadata: knowledge_pb2.DocumentMetadata, content: bytes) -> str:
    copy = K.DocumentMetadata()
    copy.CopyFrom(metadata)
    copy.ClearField("request_id")
    digest = hashlib.sha256(copy.SerializeToString(deterministic=True))
    digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def _out_of_order(message: str) -> InvalidArgument:
    return InvalidArgument(
        Reason.ERROR_REASON_UPLOAD_OUT_OF_ORDER,
        message,
        violations=[FieldViolation("part", message)],
    )


def _too_large(workspace_id: str, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        Reason.ERROR_REASON_DOCUMENT_TOO_LARGE,
        f"the document is larger than this workspace's limit of {limit} bytes; "
        "split it into smaller documents",
        quota_violations=[QuotaViolation(f"workspaces/{workspace_id}", "max_document_bytes")],
    )
