"""KnowledgeService through a real server: uploads in every format, background
processing, hybrid search with citations, deletion, reindexing, curated answers
and the knowledge base in chat turns."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from fenlo.v1 import knowledge_pb2, knowledge_pb2_grpc, workspace_pb2
from tests.chat_helpers import ChatStream
from tests.helpers import Api, rich_error

K = knowledge_pb2
DOCS = Path(__file__).resolve().parents[2] / "bench" / "kb_eval" / "docs"
HOURS = (
    "# Opening hours\n\nThe shop is open Monday to Friday from 9am to 6pm and on Saturday "
    "from 10am to 2pm. We are closed on Sundays and public holidays.\n\n"
    "# Payment\n\nWe accept credit cards, debit cards and bank transfers. Cash is not accepted."
)


def kb(api: Api) -> knowledge_pb2_grpc.KnowledgeServiceStub:
    return knowledge_pb2_grpc.KnowledgeServiceStub(api.channel)


async def wait_done(api: Api, token: str, name: str, within: float = 60.0) -> K.Document:
    """Poll until the document is READY or FAILED (bounded)."""
    deadline = time.monotonic() + within
    while True:
        document = await kb(api).GetDocument(
            K.GetDocumentRequest(name=name), metadata=api.md(token)
        )
        if document.status in (K.DOCUMENT_STATUS_READY, K.DOCUMENT_STATUS_FAILED):
            return document
        assert time.monotonic() < deadline, f"{name} still {document.status}"
        await asyncio.sleep(0.05)


async def import_text(
    api: Api, workspace: str, token: str, text: str, **document: Any
) -> K.Document:
    created = await kb(api).ImportText(
        K.ImportTextRequest(
            parent=f"workspaces/{workspace}", text=text, document=K.Document(**document)
        ),
        metadata=api.md(token),
    )
    assert created.status == K.DOCUMENT_STATUS_PENDING
    return await wait_done(api, token, created.name)


async def upload(
    api: Api,
    workspace: str,
    token: str,
    content: bytes,
    *,
    chunk_size: int = 64 * 1024,
    **document: Any,
) -> K.Document:
    async def requests() -> AsyncIterator[K.UploadDocumentRequest]:
        yield K.UploadDocumentRequest(
            metadata=K.DocumentMetadata(
                parent=f"workspaces/{workspace}", document=K.Document(**document)
            )
        )
        for start in range(0, len(content), chunk_size):
            yield K.UploadDocumentRequest(chunk=content[start : start + chunk_size])

    return await kb(api).UploadDocument(requests(), metadata=api.md(token))


async def search(
    api: Api, workspace: str, token: str, query: str, **kw: Any
) -> K.SearchKnowledgeResponse:
    return await kb(api).SearchKnowledge(
        K.SearchKnowledgeRequest(parent=f"workspaces/{workspace}", query=query, **kw),
        metadata=api.md(token),
    )


async def test_imported_text_becomes_searchable_with_citation_fields(api: Api) -> None:
    workspace, token = await api.create_workspace("Shop")
    document = await import_text(
        api, workspace, token, HOURS, title="Shop guide", source_uri="https://shop.example/guide"
    )
    assert document.status == K.DOCUMENT_STATUS_READY, document.failure
    assert document.chunk_count >= 2
    assert set(document.embedding_models) == {"minilm-l6-v2-int8", "use-multilingual-v3"}
    assert document.detected_type == "text/markdown"
    found = await search(api, workspace, token, "Do you take cash?")
    top = found.results[0]
    assert "Cash is not accepted" in top.passage
    assert top.document == document.name
    assert top.title == "Shop guide"
    assert top.source_uri == "https://shop.example/guide"
    assert list(top.heading_path) == ["Payment"]
    assert 0 < top.score <= 1
    assert [r.score for r in found.results] == sorted(
        (r.score for r in found.results), reverse=True
    )


async def test_a_question_in_another_language_finds_the_english_passage(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Shop")
    await import_text(api, workspace, token, HOURS, title="Shop guide")
    for question in (
        "¿Cuál es el horario de apertura?",
        "Quelles sont vos heures d'ouverture ?",
        "Wann haben Sie geöffnet?",
    ):
        found = await search(api, workspace, token, question)
        assert "9am to 6pm" in found.results[0].passage, question


@pytest.mark.parametrize(
    ("file", "fact", "query", "detected"),
    [
        ("services-and-prices.md", "£", "How much is a hygiene appointment?", "text/markdown"),
        ("opening-hours-and-location.html", "Quay Street", "What is the address?", "text/html"),
        ("policies.pdf", "24 hours", "How late can I cancel an appointment?", "application/pdf"),
        (
            "membership-plan.docx",
            "Smile Plan",
            "What does the membership plan include?",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ("faq.txt", "", "Do you treat children?", "text/plain"),
    ],
)
async def test_uploads_in_every_format_become_ready_and_searchable(
    sqlite_api: Api, file: str, fact: str, query: str, detected: str
) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Clinic")
    content = (DOCS / file).read_bytes()
    created = await upload(api, workspace, token, content, source_uri=file, chunk_size=4096)
    assert created.status == K.DOCUMENT_STATUS_PENDING
    assert created.size_bytes == len(content)
    assert created.title == file  # from the source URI
    document = await wait_done(api, token, created.name)
    assert document.status == K.DOCUMENT_STATUS_READY, document.failure
    assert document.detected_type == detected
    found = await search(api, workspace, token, query)
    assert found.results[0].document == document.name
    if fact:
        assert any(fact in r.context for r in found.results[:3])
    if file.endswith(".html"):  # navigation, scripts and the cookie banner are gone
        everything = " ".join(
            r.context for r in (await search(api, workspace, token, "cookies")).results
        )
        assert "Accept all" not in everything


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(DOCS / "policies.pdf").pages:
        writer.add_page(page)
    writer.encrypt("secret")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, K.DOCUMENT_FAILURE_REASON_UNSUPPORTED_TYPE),
        (b"   \n\n\t  \n", K.DOCUMENT_FAILURE_REASON_EMPTY_TEXT),
        (b"%PDF-1.4\n1 0 obj <<", K.DOCUMENT_FAILURE_REASON_MALFORMED),
        (None, K.DOCUMENT_FAILURE_REASON_ENCRYPTED),
    ],
    ids=["png", "blank", "broken-pdf", "encrypted-pdf"],
)
async def test_documents_that_cannot_be_read_fail_with_an_actionable_reason(
    sqlite_api: Api, content: bytes | None, reason: int
) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Failures")
    data = content if content is not None else encrypted_pdf()
    created = await upload(api, workspace, token, data, source_uri="file.bin")
    document = await wait_done(api, token, created.name)
    assert document.status == K.DOCUMENT_STATUS_FAILED
    assert document.failure.reason == reason
    assert len(document.failure.message) > 20
    assert (await search(api, workspace, token, "anything")).results == []


async def test_upload_limits_and_order(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace(
        "Small", quotas=workspace_pb2.WorkspaceQuotas(max_document_bytes=10_000)
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await upload(api, workspace, token, b"a" * 20_000, source_uri="big.txt")
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "DOCUMENT_TOO_LARGE")
    assert error.quota_violations == [(f"workspaces/{workspace}", "max_document_bytes")]

    async def chunk_first() -> AsyncIterator[K.UploadDocumentRequest]:
        yield K.UploadDocumentRequest(chunk=b"hello")

    with pytest.raises(aio.AioRpcError) as caught:
        await kb(api).UploadDocument(chunk_first(), metadata=api.md(token))
    assert rich_error(caught.value).reason == "UPLOAD_OUT_OF_ORDER"

    async def metadata_twice() -> AsyncIterator[K.UploadDocumentRequest]:
        metadata = K.DocumentMetadata(parent=f"workspaces/{workspace}")
        yield K.UploadDocumentRequest(metadata=metadata)
        yield K.UploadDocumentRequest(metadata=metadata)

    with pytest.raises(aio.AioRpcError) as caught:
        await kb(api).UploadDocument(metadata_twice(), metadata=api.md(token))
    assert rich_error(caught.value).reason == "UPLOAD_OUT_OF_ORDER"

    with pytest.raises(aio.AioRpcError) as caught:
        await upload(api, workspace, token, b"", source_uri="empty.txt")
    assert rich_error(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(aio.AioRpcError) as caught:
        await upload(api, workspace, token, b"x", tags=["ok", "x" * 65], title="t" * 301)
    fields = [f for f, _ in rich_error(caught.value).violations]
    assert fields == ["metadata.document.title", "metadata.document.tags[1]"]


async def test_deleting_a_document_removes_it_from_results(api: Api) -> None:
    workspace, token = await api.create_workspace("Delete")
    keep = await import_text(api, workspace, token, "Gift cards are sold at the front desk.")
    gone = await import_text(api, workspace, token, HOURS)
    assert any(
        r.document == gone.name for r in (await search(api, workspace, token, "cash")).results
    )
    await kb(api).DeleteDocument(K.DeleteDocumentRequest(name=gone.name), metadata=api.md(token))
    found = await search(api, workspace, token, "Do you take cash? opening hours")
    assert all(r.document != gone.name for r in found.results)
    assert [r.document for r in found.results] == [keep.name]
    with pytest.raises(aio.AioRpcError) as caught:
        await kb(api).GetDocument(K.GetDocumentRequest(name=gone.name), metadata=api.md(token))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reindex_keeps_the_document_searchable_and_counts_generations(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Reindex")
    document = await import_text(api, workspace, token, HOURS)
    again = await kb(api).ReindexDocument(
        K.ReindexDocumentRequest(name=document.name), metadata=api.md(token)
    )
    assert again.status == K.DOCUMENT_STATUS_PENDING
    # While it is processed again, the old passages still answer.
    assert (await search(api, workspace, token, "cash")).results
    done = await wait_done(api, token, document.name)
    assert done.status == K.DOCUMENT_STATUS_READY
    assert done.chunk_count == document.chunk_count


async def test_list_documents_filters_and_pages(api: Api) -> None:
    workspace, token = await api.create_workspace("List")
    names = []
    for i in range(5):
        document = await import_text(
            api,
            workspace,
            token,
            f"Fact number {i} about widgets.",
            tags=["even" if i % 2 == 0 else "odd"],
        )
        names.append(document.name)
    failed = await upload(api, workspace, token, b"\x00\x01\x02" * 100, source_uri="x.bin")
    await wait_done(api, token, failed.name)
    stub = kb(api)
    even = await stub.ListDocuments(
        K.ListDocumentsRequest(parent=f"workspaces/{workspace}", tag="even"), metadata=api.md(token)
    )
    assert [d.name for d in even.documents] == [names[4], names[2], names[0]]
    only_failed = await stub.ListDocuments(
        K.ListDocumentsRequest(parent=f"workspaces/{workspace}", status=K.DOCUMENT_STATUS_FAILED),
        metadata=api.md(token),
    )
    assert [d.name for d in only_failed.documents] == [failed.name]
    seen: list[str] = []
    token_ = ""
    while True:
        page = await stub.ListDocuments(
            K.ListDocumentsRequest(
                parent=f"workspaces/{workspace}", page_size=2, page_token=token_
            ),
            metadata=api.md(token),
        )
        seen += [d.name for d in page.documents]
        token_ = page.next_page_token
        if not token_:
            break
    assert seen == [failed.name, *reversed(names)]


async def test_idempotent_import(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Idem")
    request = K.ImportTextRequest(
        parent=f"workspaces/{workspace}", text="Hello", request_id=str(uuid.uuid4())
    )
    first = await kb(api).ImportText(request, metadata=api.md(token))
    second = await kb(api).ImportText(request, metadata=api.md(token))
    assert first.name == second.name
    request.text = "Something else"
    with pytest.raises(aio.AioRpcError) as caught:
        await kb(api).ImportText(request, metadata=api.md(token))
    assert rich_error(caught.value).reason == "REQUEST_ID_CONFLICT"


async def test_curated_answers_crud_and_direct_match(api: Api) -> None:
    workspace, token = await api.create_workspace("Curated")
    stub = kb(api)
    created = await stub.CreateCuratedAnswer(
        K.CreateCuratedAnswerRequest(
            parent=f"workspaces/{workspace}",
            curated_answer=K.CuratedAnswer(
                question="Do you offer free parking?",
                answer="Yes: two hours free in the garage under the building.",
                tags=["parking"],
            ),
        ),
        metadata=api.md(token),
    )
    assert created.name.startswith(f"workspaces/{workspace}/curatedAnswers/")
    found = await search(api, workspace, token, "is parking free?")
    assert found.curated_answer.name == created.name
    assert (await search(api, workspace, token, "Do you sell gift cards?")).HasField(
        "curated_answer"
    ) is False
    updated = await stub.UpdateCuratedAnswer(
        K.UpdateCuratedAnswerRequest(
            curated_answer=K.CuratedAnswer(name=created.name, answer="No, sorry."),
            update_mask={"paths": ["answer"]},
        ),
        metadata=api.md(token),
    )
    assert updated.answer == "No, sorry."
    assert updated.question == created.question
    listed = await stub.ListCuratedAnswers(
        K.ListCuratedAnswersRequest(parent=f"workspaces/{workspace}"), metadata=api.md(token)
    )
    assert [a.name for a in listed.curated_answers] == [created.name]
    await stub.DeleteCuratedAnswer(
        K.DeleteCuratedAnswerRequest(name=created.name), metadata=api.md(token)
    )
    assert not (await search(api, workspace, token, "is parking free?")).HasField("curated_answer")
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.CreateCuratedAnswer(
            K.CreateCuratedAnswerRequest(
                parent=f"workspaces/{workspace}", curated_answer=K.CuratedAnswer(question=" ")
            ),
            metadata=api.md(token),
        )
    fields = [f for f, _ in rich_error(caught.value).violations]
    assert fields == ["curated_answer.question", "curated_answer.answer"]


async def test_chat_answers_from_the_knowledge_base_with_citations(api: Api) -> None:
    workspace, token = await api.create_workspace("Chat KB")
    document = await import_text(api, workspace, token, HOURS, title="Shop guide")
    chat = ChatStream(api, token)
    session = await chat.start(parent=f"workspaces/{workspace}")
    await chat.say("Do you accept cash?")
    turn = await chat.turn()
    assert "Cash is not accepted" in turn.text
    assert "[1]" in turn.text
    citations = [e.citations for e in turn.events if e.WhichOneof("kind") == "citations"]
    assert len(citations) == 1
    cited = citations[0].citations[0]
    assert (cited.index, cited.document, cited.title) == (1, document.name, "Shop guide")
    kinds = [e.WhichOneof("kind") for e in turn.events]
    assert kinds.index("citations") > max(i for i, k in enumerate(kinds) if k == "delta")
    stored = await api.conversations.ListMessages(
        __import__("fenlo.v1.conversation_pb2", fromlist=["x"]).ListMessagesRequest(
            parent=session.conversation.name
        ),
        metadata=api.md(token),
    )
    assert stored.messages[-1].citations[0].document == document.name
    # A curated answer answers directly, without the LLM.
    await kb(api).CreateCuratedAnswer(
        K.CreateCuratedAnswerRequest(
            parent=f"workspaces/{workspace}",
            curated_answer=K.CuratedAnswer(
                question="Can I bring my dog?", answer="Dogs on a lead are welcome."
            ),
        ),
        metadata=api.md(token),
    )
    await chat.say("Can I bring my dog?")
    turn = await chat.turn()
    assert turn.text == "Dogs on a lead are welcome."
    assert list(turn.completed.providers) == ["curated"]
    chat.call.cancel()


async def test_another_workspace_cannot_search_or_read_the_knowledge_base(api: Api) -> None:
    a, a_token = await api.create_workspace("A")
    b, b_token = await api.create_workspace("B")
    marker = f"zebra-{uuid.uuid4().hex[:8]}"
    document = await import_text(api, a, a_token, f"The secret code word is {marker}.")
    for call in (
        search(api, a, b_token, marker),
        kb(api).GetDocument(K.GetDocumentRequest(name=document.name), metadata=api.md(b_token)),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await call
        assert rich_error(caught.value).reason == "PERMISSION_DENIED_WORKSPACE"
    await import_text(api, b, b_token, "Nothing secret here, only zebras.")
    found = await search(api, b, b_token, marker)
    assert all(marker not in r.passage + r.context for r in found.results)
