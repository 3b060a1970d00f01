"""LeadService and AnalyticsService through the real server, filled by real
chat turns (the offline LLM provider answers): leads with their signals and
captured contact details, listing order, filters and paging, updates with a
field mask and their outbox event; workspace figures that match exactly what
the turns did, time ranges, provider failovers."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc import aio
from sqlalchemy import select

from fenlo.v1 import analysis_pb2, analytics_pb2, analytics_pb2_grpc, chat_pb2, lead_pb2_grpc
from fenlo.v1 import conversation_pb2 as C
from fenlo.v1 import lead_pb2 as L
from fenlo_server.storage.models import OutboxEventRow, TurnRow
from tests.chat_helpers import ChatStream, Turn
from tests.conftest import make_settings, start_app
from tests.fakes.openai_server import FakeLlmServer, Reply
from tests.helpers import Api, RichError, rich_error

A = analysis_pb2
S = analytics_pb2


def leads(api: Api) -> lead_pb2_grpc.LeadServiceStub:
    return lead_pb2_grpc.LeadServiceStub(api.channel)


def analytics(api: Api) -> analytics_pb2_grpc.AnalyticsServiceStub:
    return analytics_pb2_grpc.AnalyticsServiceStub(api.channel)


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def failure(call: object) -> RichError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return rich_error(caught.value)


async def converse(api: Api, token: str, workspace: str, *texts: str) -> tuple[str, list[Turn]]:
    """One conversation of ``texts``; its name and turns."""
    chat = ChatStream(api, token)
    session = await chat.start(parent=f"workspaces/{workspace}")
    turns = []
    for text in texts:
        await chat.say(text)
        turns.append(await chat.turn())
    await chat.send(end=chat_pb2.EndChat())
    await chat.rest()
    return session.conversation.name, turns


def analysis_of(turn: Turn) -> A.TurnAnalysis:
    """The turn's post-generation analysis, as streamed."""
    found = [
        e.annotations.analysis
        for e in turn.events
        if e.WhichOneof("kind") == "annotations"
        and e.annotations.phase == chat_pb2.ANNOTATION_PHASE_ANALYSIS
    ]
    assert len(found) == 1, turn.events
    return found[0]


async def lead_of(api: Api, token: str, workspace: str, conversation: str) -> L.Lead:
    page = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=f"workspaces/{workspace}", conversation=conversation),
        metadata=api.md(token),
    )
    assert len(page.leads) == 1, page
    return page.leads[0]


# ---------------------------------------------------------------- leads


async def test_a_pricing_question_with_an_email_becomes_a_lead(api: Api) -> None:
    workspace, token = await api.create_workspace("Leads")
    conversation, [turn] = await converse(
        api, token, workspace, "How much does the pro plan cost? My email is Ana@Example.com"
    )
    lead = await lead_of(api, token, workspace, conversation)
    assert lead.name.startswith(f"workspaces/{workspace}/leads/")
    assert lead.conversation == conversation
    assert lead.status == L.LEAD_STATUS_NEW
    assert lead.turns == 1
    kinds = {s.kind: s for s in lead.signals}
    assert {"pricing", "contact"} <= set(kinds), kinds
    assert kinds["contact"].evidence == "email"  # the kinds of detail, not the details
    assert "How much" in kinds["pricing"].evidence
    assert lead.contact.email == "ana@example.com"
    # The score is what the turn's analysis said, and the sum of its signals.
    streamed = analysis_of(turn).lead_score
    assert lead.score == pytest.approx(streamed.score)
    assert lead.score == pytest.approx(sum(s.points for s in lead.signals))
    assert lead.score >= 35
    assert [(s.kind, s.points) for s in lead.signals] == [
        (s.kind, s.points) for s in streamed.signals
    ]
    got = await leads(api).GetLead(L.GetLeadRequest(name=lead.name), metadata=api.md(token))
    assert got == lead
    missing = await failure(
        leads(api).GetLead(
            L.GetLeadRequest(name=f"workspaces/{workspace}/leads/zz0000"), metadata=api.md(token)
        )
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_list_leads_order_filters_and_paging(api: Api) -> None:
    workspace, token = await api.create_workspace("Leads list")
    md = api.md(token)
    parent = f"workspaces/{workspace}"
    warm, _ = await converse(api, token, workspace, "How much is it? I'm at ana@example.com")
    cold, _ = await converse(api, token, workspace, "Hello there")
    hot, _ = await converse(
        api,
        token,
        workspace,
        "I'm the owner and we need a quote this week, our budget is $5,000. bo@example.com",
    )
    by_conversation = {c: await lead_of(api, token, workspace, c) for c in (warm, cold, hot)}
    scores = {c: lead.score for c, lead in by_conversation.items()}
    assert scores[hot] > scores[warm] > scores[cold], scores

    page = await leads(api).ListLeads(L.ListLeadsRequest(parent=parent), metadata=md)
    assert [lead.conversation for lead in page.leads] == [hot, warm, cold]
    assert page.next_page_token == ""
    newest = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=parent, order_by="create_time desc"), metadata=md
    )
    assert [lead.conversation for lead in newest.leads] == [hot, cold, warm]

    # One lead a page, in the same order; the token is bound to the query.
    seen: list[str] = []
    token_ = ""
    for _ in range(5):
        one = await leads(api).ListLeads(
            L.ListLeadsRequest(parent=parent, page_size=1, page_token=token_), metadata=md
        )
        seen.extend(lead.conversation for lead in one.leads)
        token_ = one.next_page_token
        if not token_:
            break
    assert seen == [hot, warm, cold]
    # Paging works the same in the other orders (keyset on a timestamp and the id).
    for order in ("create_time desc", "update_time desc"):
        full = await leads(api).ListLeads(
            L.ListLeadsRequest(parent=parent, order_by=order), metadata=md
        )
        paged: list[str] = []
        token_ = ""
        for _ in range(5):
            one = await leads(api).ListLeads(
                L.ListLeadsRequest(parent=parent, order_by=order, page_size=2, page_token=token_),
                metadata=md,
            )
            paged.extend(lead.name for lead in one.leads)
            token_ = one.next_page_token
            if not token_:
                break
        assert paged == [lead.name for lead in full.leads] and len(paged) == 3, order
    first = await leads(api).ListLeads(L.ListLeadsRequest(parent=parent, page_size=1), metadata=md)
    changed = await failure(
        leads(api).ListLeads(
            L.ListLeadsRequest(
                parent=parent, page_size=1, page_token=first.next_page_token, min_score=10
            ),
            metadata=md,
        )
    )
    assert changed.code == grpc.StatusCode.INVALID_ARGUMENT

    # Filters.
    above = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=parent, min_score=scores[warm]), metadata=md
    )
    assert [lead.conversation for lead in above.leads] == [hot, warm]
    email = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=parent, contact_email="BO@example.com"), metadata=md
    )
    assert [lead.conversation for lead in email.leads] == [hot]
    await leads(api).UpdateLead(
        L.UpdateLeadRequest(
            lead=L.Lead(name=by_conversation[cold].name, status=L.LEAD_STATUS_LOST),
            update_mask=mask("status"),
        ),
        metadata=md,
    )
    lost = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=parent, statuses=[L.LEAD_STATUS_LOST, L.LEAD_STATUS_WON]),
        metadata=md,
    )
    assert [lead.conversation for lead in lost.leads] == [cold]
    open_ = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=parent, statuses=[L.LEAD_STATUS_NEW]), metadata=md
    )
    assert [lead.conversation for lead in open_.leads] == [hot, warm]
    recent = await leads(api).ListLeads(
        L.ListLeadsRequest(parent=parent, order_by="update_time desc"), metadata=md
    )
    assert recent.leads[0].conversation == cold

    for request, field in [
        (L.ListLeadsRequest(parent=parent, order_by="score asc"), "order_by"),
        (L.ListLeadsRequest(parent=parent, min_score=101), "min_score"),
        (L.ListLeadsRequest(parent=parent, statuses=[L.LEAD_STATUS_UNSPECIFIED]), "statuses[0]"),
        (
            L.ListLeadsRequest(parent=parent, conversation="workspaces/other/conversations/c1"),
            "conversation",
        ),
        (L.ListLeadsRequest(parent=parent, conversation="nonsense"), "conversation"),
    ]:
        error = await failure(leads(api).ListLeads(request, metadata=md))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, request
        assert [v[0] for v in error.violations] == [field], error


async def test_update_lead_with_a_field_mask(api: Api) -> None:
    workspace, token = await api.create_workspace("Leads update")
    md = api.md(token)
    conversation, _ = await converse(api, token, workspace, "What are your prices?")
    lead = await lead_of(api, token, workspace, conversation)
    assert not lead.HasField("qualified_time")

    updated = await leads(api).UpdateLead(
        L.UpdateLeadRequest(
            lead=L.Lead(
                name=lead.name,
                status=L.LEAD_STATUS_QUALIFIED,
                owner="sam@shop.example",
                notes="Call back on Monday.",
                score=99,  # not in the mask: ignored
            ),
            update_mask=mask("status", "owner", "notes"),
        ),
        metadata=md,
    )
    assert (updated.status, updated.owner, updated.notes) == (
        L.LEAD_STATUS_QUALIFIED,
        "sam@shop.example",
        "Call back on Monday.",
    )
    assert updated.score == lead.score
    assert updated.HasField("qualified_time")
    assert updated.update_time.ToDatetime() > lead.update_time.ToDatetime()
    assert await leads(api).GetLead(L.GetLeadRequest(name=lead.name), metadata=md) == updated

    # Only the masked field changes; an empty mask means the fields that are set.
    notes_only = await leads(api).UpdateLead(
        L.UpdateLeadRequest(lead=L.Lead(name=lead.name, notes="Sent a quote."), update_mask=None),
        metadata=md,
    )
    assert (notes_only.status, notes_only.owner, notes_only.notes) == (
        L.LEAD_STATUS_QUALIFIED,
        "sam@shop.example",
        "Sent a quote.",
    )

    async with api.app.db.workspace(workspace) as db:
        events = (
            (
                await db.execute(
                    select(OutboxEventRow)
                    .where(OutboxEventRow.type == "lead.updated")
                    .order_by(OutboxEventRow.seq)
                )
            )
            .scalars()
            .all()
        )
    assert [(e.payload["lead"], e.payload["fields"], e.payload["status"]) for e in events] == [
        (lead.name, ["status", "owner", "notes"], "QUALIFIED"),
        (lead.name, ["notes"], "QUALIFIED"),
    ]
    assert all(e.payload["conversation"] == conversation for e in events)

    # A later turn moves the score but keeps what people set.
    chat = ChatStream(api, token)
    await chat.start(conversation=conversation)
    await chat.say("We need it this week, my budget is $2,000")
    await chat.turn()
    chat.call.cancel()
    after = await leads(api).GetLead(L.GetLeadRequest(name=lead.name), metadata=md)
    assert after.turns == 2
    assert after.score > lead.score
    assert (after.status, after.owner, after.notes) == (
        L.LEAD_STATUS_QUALIFIED,
        "sam@shop.example",
        "Sent a quote.",
    )

    # Invalid updates change nothing.
    for request, reason, field in [
        (
            L.UpdateLeadRequest(lead=L.Lead(name=lead.name, score=1), update_mask=mask("score")),
            "UPDATE_MASK_INVALID",
            "update_mask",
        ),
        (
            L.UpdateLeadRequest(lead=L.Lead(name=lead.name), update_mask=mask("contact")),
            "UPDATE_MASK_INVALID",
            "update_mask",
        ),
        (
            L.UpdateLeadRequest(lead=L.Lead(name=lead.name), update_mask=mask("status")),
            "INVALID_ARGUMENT",
            "lead.status",
        ),
        (
            L.UpdateLeadRequest(
                lead=L.Lead(name=lead.name, owner="x" * 201), update_mask=mask("owner")
            ),
            "INVALID_ARGUMENT",
            "lead.owner",
        ),
        (
            L.UpdateLeadRequest(
                lead=L.Lead(name=lead.name, notes="n" * 10_001), update_mask=mask("notes")
            ),
            "INVALID_ARGUMENT",
            "lead.notes",
        ),
        (
            L.UpdateLeadRequest(lead=L.Lead(name="leads/1", notes="x"), update_mask=mask("notes")),
            "RESOURCE_NAME_INVALID",
            "lead.name",
        ),
    ]:
        error = await failure(leads(api).UpdateLead(request, metadata=md))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), error
        assert [v[0] for v in error.violations] == [field], error
    assert await leads(api).GetLead(L.GetLeadRequest(name=lead.name), metadata=md) == after
    missing = await failure(
        leads(api).UpdateLead(
            L.UpdateLeadRequest(
                lead=L.Lead(name=f"workspaces/{workspace}/leads/zz0000", notes="x"),
                update_mask=mask("notes"),
            ),
            metadata=md,
        )
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    # A service may read leads but not change them.
    service = api.md(api.token(workspace, "service"))
    await leads(api).GetLead(L.GetLeadRequest(name=lead.name), metadata=service)
    denied = await failure(
        leads(api).UpdateLead(
            L.UpdateLeadRequest(lead=L.Lead(name=lead.name, notes="x"), update_mask=mask("notes")),
            metadata=service,
        )
    )
    assert denied.reason == "PERMISSION_DENIED_ROLE"


# ---------------------------------------------------------------- analytics


async def stats(
    api: Api,
    token: str,
    workspace: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> S.WorkspaceStats:
    request = S.GetWorkspaceStatsRequest(workspace=f"workspaces/{workspace}")
    if start is not None:
        request.start_time.CopyFrom(stamp(start))
    if end is not None:
        request.end_time.CopyFrom(stamp(end))
    return await analytics(api).GetWorkspaceStats(request, metadata=api.md(token))


def expected_counts(turns: list[Turn]) -> tuple[Counter[int], Counter[int]]:
    intents: Counter[int] = Counter()
    sentiments: Counter[int] = Counter()
    for turn in turns:
        analysis = analysis_of(turn)
        if analysis.HasField("intent"):
            intents[analysis.intent.kind] += 1
        if analysis.HasField("sentiment"):
            sentiments[analysis.sentiment.label] += 1
    return intents, sentiments


async def test_workspace_stats_count_what_the_turns_did(api: Api) -> None:
    workspace, token = await api.create_workspace("Stats")
    md = api.md(token)
    before = datetime.now(UTC)
    first, first_turns = await converse(
        api,
        token,
        workspace,
        "How much does a coffee cost? My email is kim@example.com",
        "Thank you, that is wonderful!",
    )
    middle = datetime.now(UTC)
    second, second_turns = await converse(
        api,
        token,
        workspace,
        "This is useless, I want to talk to a real person now.",
        "Hello? Anyone?",
    )
    await api.conversations.PostAgentMessage(
        C.PostAgentMessageRequest(parent=second, text="Hi, Sam here."), metadata=md
    )
    first_lead = await lead_of(api, token, workspace, first)
    await leads(api).UpdateLead(
        L.UpdateLeadRequest(
            lead=L.Lead(name=first_lead.name, status=L.LEAD_STATUS_WON), update_mask=mask("status")
        ),
        metadata=md,
    )
    turns = [*first_turns, *second_turns]

    roles: Counter[int] = Counter()
    for conversation in (first, second):
        page = await api.conversations.ListMessages(
            C.ListMessagesRequest(parent=conversation, page_size=100), metadata=md
        )
        roles.update(m.role for m in page.messages)
    handoffs = sum(1 for t in turns for e in t.events if e.WhichOneof("kind") == "handoff")
    answered = sum(1 for t in turns if t.text)
    assert handoffs == 1 and answered == 3  # the turn after the handoff is silent

    got = await stats(api, token, workspace)
    assert got.workspace == f"workspaces/{workspace}"
    assert got.end_time.ToDatetime(tzinfo=UTC) - got.start_time.ToDatetime(tzinfo=UTC) == (
        timedelta(days=30)
    )
    assert got.conversations == 2
    assert (
        (got.messages.user, got.messages.assistant, got.messages.agent)
        == (
            roles[C.MESSAGE_ROLE_USER],
            roles[C.MESSAGE_ROLE_ASSISTANT],
            roles[C.MESSAGE_ROLE_AGENT],
        )
        == (4, 3, 1)
    )
    assert got.turns == 4
    intents, sentiments = expected_counts(turns)
    assert {c.intent: c.count for c in got.intents} == dict(intents)
    assert [c.count for c in got.intents] == sorted((c.count for c in got.intents), reverse=True)
    assert {c.label: c.count for c in got.sentiments} == dict(sentiments)
    assert intents[A.INTENT_KIND_ESCALATION] >= 1
    assert sentiments[A.SENTIMENT_LABEL_POSITIVE] >= 1
    assert sentiments[A.SENTIMENT_LABEL_NEGATIVE] >= 1
    assert got.handoffs == handoffs
    assert {c.status: c.count for c in got.leads} == {
        L.LEAD_STATUS_WON: 1,
        L.LEAD_STATUS_NEW: 1,
    }
    # Every answer came from the LLM (the offline provider), with no failover.
    ttft = got.time_to_first_token
    assert ttft.count == ttft.sample_size == answered
    assert 0 < ttft.p50_ms <= ttft.p95_ms
    assert (got.provider_failovers, got.turns_with_failover) == (0, 0)
    async with api.app.db.workspace(workspace) as db:
        stored = (await db.execute(select(TurnRow))).scalars().all()
    assert sorted(r.ttft_ms for r in stored if r.ttft_ms is not None)[-1] == ttft.p95_ms
    # No knowledge base: no answer was grounded, so none is graded.
    assert (got.average_quality, got.graded_answers) == (0.0, 0)

    # Only the second conversation lies after `middle`.
    later = await stats(api, token, workspace, start=middle, end=datetime.now(UTC))
    assert later.conversations == 1
    assert (later.messages.user, later.messages.assistant, later.messages.agent) == (2, 1, 1)
    assert later.turns == 2
    later_intents, later_sentiments = expected_counts(second_turns)
    assert {c.intent: c.count for c in later.intents} == dict(later_intents)
    assert {c.label: c.count for c in later.sentiments} == dict(later_sentiments)
    assert later.handoffs == 1
    assert {c.status: c.count for c in later.leads} == {L.LEAD_STATUS_NEW: 1}
    assert later.time_to_first_token.count == 1
    # Nothing happened before the first turn.
    empty = await stats(api, token, workspace, start=before - timedelta(days=2), end=before)
    assert empty.conversations == empty.turns == empty.handoffs == 0
    assert not empty.intents and not empty.sentiments and not empty.leads
    assert empty.messages == S.MessageCounts()
    assert empty.time_to_first_token == S.LatencyStats()
    # Only an end: the 30 days before it.
    only_end = await stats(api, token, workspace, end=before)
    assert only_end.start_time.ToDatetime(tzinfo=UTC) == before - timedelta(days=30)


async def test_workspace_stats_with_a_knowledge_base_grade_answers(api: Api) -> None:
    from tests.integration.test_chat_pipeline import HOURS, add_text

    workspace, token = await api.create_workspace("Stats graded")
    await add_text(api, workspace, token, HOURS)
    _, turns = await converse(api, token, workspace, "Do you accept cash?", "When are you open?")
    qualities = [analysis_of(t).quality.score for t in turns if analysis_of(t).HasField("quality")]
    assert len(qualities) == 2
    got = await stats(api, token, workspace)
    assert got.graded_answers == 2
    assert got.average_quality == pytest.approx(sum(qualities) / 2)


async def test_invalid_ranges_are_refused(api: Api) -> None:
    workspace, token = await api.create_workspace("Stats ranges")
    now = datetime.now(UTC)
    for start, end, field in [
        (now, now, "end_time"),
        (now, now - timedelta(hours=1), "end_time"),
        (now - timedelta(days=367), now, "end_time"),
        (None, now - timedelta(days=400), None),  # valid: the 30 days before
    ]:
        if field is None:
            got = await stats(api, token, workspace, start=start, end=end)
            assert got.conversations == 0
            continue
        error = await failure(stats(api, token, workspace, start=start, end=end))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert [v[0] for v in error.violations] == [field]
    bad = S.GetWorkspaceStatsRequest(workspace=f"workspaces/{workspace}")
    bad.start_time.nanos = -1
    error = await failure(analytics(api).GetWorkspaceStats(bad, metadata=api.md(token)))
    assert [v[0] for v in error.violations] == ["start_time"]
    # Admin and service may read the figures; an agent may not.
    service = api.token(workspace, "service")
    await stats(api, service, workspace)
    agent = api.token(workspace, "agent")
    denied = await failure(stats(api, agent, workspace))
    assert denied.reason == "PERMISSION_DENIED_ROLE"


@pytest.fixture
async def failover_api(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Api, FakeLlmServer]]:
    async with (
        FakeLlmServer(Reply(tokens=["Hello", " there."])) as groq,
        FakeLlmServer(Reply(tokens=["We", " open", " at", " nine."])) as openai,
    ):
        app = await start_app(
            make_settings(
                tmp_path,
                database_url,
                openai_api_key="test",
                openai_base_url=openai.openai_url,
                groq_api_key="test",
                groq_base_url=groq.groq_url,
                llm_order="groq,openai",
                llm_offline_fallback=False,
                llm_first_token_timeout_seconds=2.0,
                llm_stall_timeout_seconds=2.0,
            )
        )
        try:
            async with Api(app) as api:
                yield api, groq
        finally:
            await app.stop(grace=0)


async def test_provider_failovers_are_counted(
    failover_api: tuple[Api, FakeLlmServer],
) -> None:
    api, groq = failover_api
    workspace, token = await api.create_workspace("Failover stats")
    groq.script(Reply(status=500))
    _, turns = await converse(api, token, workspace, "When do you open?", "Thanks")
    assert list(turns[0].completed.providers) == ["openai"]
    assert turns[0].text == "We open at nine."
    got = await stats(api, token, workspace)
    assert (got.provider_failovers, got.turns_with_failover) == (1, 1)
    assert got.turns == 2
    assert got.time_to_first_token.count == 2
