"""ConversationService: conversations and their messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from google.protobuf import empty_pb2, json_format
from grpc import aio
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo.v1 import analysis_pb2, conversation_pb2, conversation_pb2_grpc
from fenlo_server import names
from fenlo_server.api.common import (
    Deps,
    Pager,
    authorize_workspace,
    check_labels,
    check_text,
    create_once,
    from_timestamp,
    request_hash,
    request_id_of,
    to_timestamp,
    update_paths,
)
from fenlo_server.errors import FailedPrecondition, Reason, Violations, not_found
from fenlo_server.events.types import (
    AGENT_MESSAGE_POSTED,
    CONVERSATION_STATE_CHANGED,
    Event,
)
from fenlo_server.lifecycle import DataLifecycle
from fenlo_server.storage.lifecycle import ExportFilter, conversations_after
from fenlo_server.storage.models import ConversationRow, MessageRow
from fenlo_server.storage.outbox import append_events
from fenlo_server.storage.repositories import ConversationFilter, ConversationRepository

Ctx = aio.ServicerContext[Any, Any]
Channel = conversation_pb2.Channel
State = conversation_pb2.ConversationState
Role = conversation_pb2.MessageRole
MAX_CONTACT_ID = 256
UPDATABLE = ("metadata", "state")
EXPORT_CONVERSATIONS = 100  # conversations read per batch by ExportConversations
EXPORT_MESSAGES = 500  # messages per batch, and most messages in one export response


def channel_name(value: int) -> str:
    return Channel.Name(value).removeprefix("CHANNEL_")  # type: ignore[arg-type]


def state_name(value: int) -> str:
    return State.Name(value).removeprefix("CONVERSATION_STATE_")  # type: ignore[arg-type]


def conversation_to_proto(row: ConversationRow) -> conversation_pb2.Conversation:
    return conversation_pb2.Conversation(
        name=names.conversation(row.workspace_id, row.id),
        channel=Channel.Value(f"CHANNEL_{row.channel}"),
        external_contact_id=row.external_contact_id,
        metadata=row.labels,
        state=State.Value(f"CONVERSATION_STATE_{row.state}"),
        analysis=json_format.ParseDict(
            row.analysis, analysis_pb2.ConversationAnalysis(), ignore_unknown_fields=True
        ),
        message_count=row.message_count,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
        last_message_time=to_timestamp(row.last_message_time),
    )


def message_to_proto(row: MessageRow) -> conversation_pb2.Message:
    return conversation_pb2.Message(
        name=names.message(row.workspace_id, row.conversation_id, row.id),
        role=Role.Value(f"MESSAGE_ROLE_{row.role}"),
        text=row.text,
        create_time=to_timestamp(row.create_time),
        turn_id=row.turn_id,
        client_message_id=row.client_message_id,
        interrupted=row.interrupted,
        citations=[
            json_format.ParseDict(c, conversation_pb2.Citation(), ignore_unknown_fields=True)
            for c in row.citations
        ],
        analysis=json_format.ParseDict(
            row.analysis, analysis_pb2.TurnAnalysis(), ignore_unknown_fields=True
        ),
        author=row.author,
    )


def validate_new_conversation(
    violations: Violations,
    prefix: str,
    channel: int,
    external_contact_id: str,
    metadata: dict[str, str],
) -> None:
    if channel not in Channel.values():
        violations.add(f"{prefix}channel", "is not a known channel")
    check_text(
        violations, f"{prefix}external_contact_id", external_contact_id, max_chars=MAX_CONTACT_ID
    )
    check_labels(violations, f"{prefix}metadata", metadata)


class ConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    def __init__(self, deps: Deps, lifecycle: DataLifecycle | None = None) -> None:
        self._deps = deps
        self._lifecycle = lifecycle

    async def _require_workspace(self, workspace_id: str) -> None:
        if await self._deps.directory.get(workspace_id) is None:
            raise not_found("workspace", names.workspace(workspace_id))

    async def CreateConversation(
        self, request: conversation_pb2.CreateConversationRequest, context: Ctx
    ) -> conversation_pb2.Conversation:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        conv = request.conversation
        violations = Violations()
        validate_new_conversation(
            violations,
            "conversation.",
            conv.channel,
            conv.external_contact_id,
            dict(conv.metadata),
        )
        if conv.state not in State.values():
            violations.add("conversation.state", "is not a known state")
        violations.raise_if_any()
        request_id = request_id_of(request.request_id)
        digest = request_hash(request) if request_id else None
        await self._require_workspace(workspace_id)

        async def create(session: AsyncSession) -> ConversationRow:
            return await ConversationRepository(session).create(
                channel=channel_name(conv.channel or Channel.CHANNEL_API),
                external_contact_id=conv.external_contact_id,
                labels=dict(conv.metadata),
                state=state_name(conv.state or State.CONVERSATION_STATE_OPEN),
                request_id=request_id,
                request_hash=digest,
            )

        row, _ = await create_once(
            lambda: self._deps.db.workspace(workspace_id),
            request_id,
            digest,
            lambda session, rid: ConversationRepository(session).find_by_request_id(rid),
            create,
        )
        return conversation_to_proto(row)

    async def GetConversation(
        self, request: conversation_pb2.GetConversationRequest, context: Ctx
    ) -> conversation_pb2.Conversation:
        workspace_id, conversation_id = names.parse("conversation", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            row = await ConversationRepository(session).get(conversation_id)
        if row is None:
            raise not_found("conversation", request.name)
        return conversation_to_proto(row)

    async def ListConversations(
        self, request: conversation_pb2.ListConversationsRequest, context: Ctx
    ) -> conversation_pb2.ListConversationsResponse:
        workspace_id = names.workspace_id(request.parent, "parent")
        principal = authorize_workspace(workspace_id)
        violations = Violations()
        if request.state not in State.values():
            violations.add("state", "is not a known state")
        if request.channel not in Channel.values():
            violations.add("channel", "is not a known channel")
        check_text(
            violations, "external_contact_id", request.external_contact_id, max_chars=MAX_CONTACT_ID
        )
        start = from_timestamp(request, "create_time_start", "create_time_start", violations)
        end = from_timestamp(request, "create_time_end", "create_time_end", violations)
        violations.raise_if_any()
        filters = ConversationFilter(
            state=state_name(request.state) if request.state else None,
            channel=channel_name(request.channel) if request.channel else None,
            external_contact_id=request.external_contact_id or None,
            create_time_start=start,
            create_time_end=end,
        )
        query = {
            "method": "ListConversations",
            "parent": request.parent,
            "state": filters.state,
            "channel": filters.channel,
            "contact": filters.external_contact_id,
            "start": start.isoformat() if start else None,
            "end": end.isoformat() if end else None,
        }
        pager = Pager(self._deps, principal, request.page_size, request.page_token, query)
        async with self._deps.db.workspace(workspace_id) as session:
            rows = await ConversationRepository(session).list_page(
                filters=filters, limit=pager.limit, before_id=pager.cursor.get("id")
            )
        rows, token = pager.finish(rows, lambda row: {"id": row.id})
        return conversation_pb2.ListConversationsResponse(
            conversations=[conversation_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateConversation(
        self, request: conversation_pb2.UpdateConversationRequest, context: Ctx
    ) -> conversation_pb2.Conversation:
        workspace_id, conversation_id = names.parse(
            "conversation", request.conversation.name, "conversation.name"
        )
        authorize_workspace(workspace_id)
        paths = update_paths(request.update_mask, request.conversation, UPDATABLE, nested=False)
        conv = request.conversation
        violations = Violations()
        if "metadata" in paths:
            check_labels(violations, "conversation.metadata", dict(conv.metadata))
        if "state" in paths and (
            conv.state == State.CONVERSATION_STATE_UNSPECIFIED or conv.state not in State.values()
        ):
            violations.add("conversation.state", "must be OPEN, HANDED_OFF or CLOSED")
        violations.raise_if_any()
        async with self._deps.db.workspace(workspace_id) as session:
            repo = ConversationRepository(session)
            row = await repo.get(conversation_id)
            if row is None:
                raise not_found("conversation", conv.name)
            if "metadata" in paths:
                row.labels = dict(conv.metadata)
            changed = "state" in paths and row.state != state_name(conv.state)
            if "state" in paths:
                row.state = state_name(conv.state)
            row = await repo.save(row)
            if changed:
                await append_events(
                    session,
                    [
                        Event(
                            CONVERSATION_STATE_CHANGED,
                            {"conversation": conv.name, "state": row.state},
                        )
                    ],
                )
        # Live Chat streams learn of the change from the event (ChatHub.on_event).
        return conversation_to_proto(row)

    async def DeleteConversation(
        self, request: conversation_pb2.DeleteConversationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        workspace_id, conversation_id = names.parse("conversation", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            deleted = await ConversationRepository(session).delete(conversation_id)
        if not deleted:
            raise not_found("conversation", request.name)
        return empty_pb2.Empty()

    async def ListMessages(
        self, request: conversation_pb2.ListMessagesRequest, context: Ctx
    ) -> conversation_pb2.ListMessagesResponse:
        workspace_id, conversation_id = names.parse("conversation", request.parent, "parent")
        principal = authorize_workspace(workspace_id)
        pager = Pager(
            self._deps,
            principal,
            request.page_size,
            request.page_token,
            {"method": "ListMessages", "parent": request.parent},
        )
        async with self._deps.db.workspace(workspace_id) as session:
            repo = ConversationRepository(session)
            if await repo.get(conversation_id) is None:
                raise not_found("conversation", request.parent)
            rows = await repo.list_messages(
                conversation_id, limit=pager.limit, after_seq=int(pager.cursor.get("seq", 0))
            )
        rows, token = pager.finish(rows, lambda row: {"seq": row.seq})
        return conversation_pb2.ListMessagesResponse(
            messages=[message_to_proto(r) for r in rows], next_page_token=token
        )

    async def PostAgentMessage(
        self, request: conversation_pb2.PostAgentMessageRequest, context: Ctx
    ) -> conversation_pb2.Message:
        workspace_id, conversation_id = names.parse("conversation", request.parent, "parent")
        principal = authorize_workspace(workspace_id)
        violations = Violations()
        check_text(violations, "text", request.text, max_chars=8000, required=True)
        check_text(violations, "author", request.author, max_chars=200)
        violations.raise_if_any()
        async with self._deps.db.workspace(workspace_id) as session:
            repo = ConversationRepository(session)
            row = await repo.get(conversation_id)
            if row is None:
                raise not_found("conversation", request.parent)
            if row.state == "CLOSED":
                raise FailedPrecondition(
                    Reason.ERROR_REASON_CONVERSATION_CLOSED,
                    f"{request.parent} is closed and takes no new messages",
                )
            message = await repo.append_message(
                conversation_id,
                role="AGENT",
                text=request.text,
                author=request.author or principal.subject,
            )
            handed_off = row.state == "OPEN"
            if handed_off:
                row.state = "HANDED_OFF"
                await repo.save(row)
            posted = [
                Event(
                    AGENT_MESSAGE_POSTED,
                    {
                        "message": names.message(workspace_id, conversation_id, message.id),
                        "conversation": request.parent,
                    },
                )
            ]
            if handed_off:
                posted.append(
                    Event(
                        CONVERSATION_STATE_CHANGED,
                        {"conversation": request.parent, "state": "HANDED_OFF"},
                    )
                )
            await append_events(session, posted)
        # The events reach the conversation's live Chat stream through the event
        # bus (ChatHub.on_event): at once when it is held on this server (on
        # commit), through Redis when it is held on another replica.
        return message_to_proto(message)

    async def EraseContact(
        self, request: conversation_pb2.EraseContactRequest, context: Ctx
    ) -> conversation_pb2.EraseContactResponse:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        check_text(
            violations,
            "external_contact_id",
            request.external_contact_id,
            max_chars=MAX_CONTACT_ID,
            required=True,
        )
        violations.raise_if_any()
        await self._require_workspace(workspace_id)
        assert self._lifecycle is not None, "EraseContact needs the data lifecycle"
        erased = await self._lifecycle.erase_contact(workspace_id, request.external_contact_id)
        return conversation_pb2.EraseContactResponse(
            conversations_deleted=erased.conversations,
            messages_deleted=erased.messages,
            leads_deleted=erased.leads,
            events_deleted=erased.events,
            streams_ended=erased.streams_ended,
            contact_hash=erased.contact_hash,
        )

    async def ExportConversations(
        self, request: conversation_pb2.ExportConversationsRequest, context: Ctx
    ) -> AsyncIterator[conversation_pb2.ExportConversationsResponse]:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        check_text(
            violations, "external_contact_id", request.external_contact_id, max_chars=MAX_CONTACT_ID
        )
        start = from_timestamp(request, "create_time_start", "create_time_start", violations)
        end = from_timestamp(request, "create_time_end", "create_time_end", violations)
        violations.raise_if_any()
        await self._require_workspace(workspace_id)
        filters = ExportFilter(start, end, request.external_contact_id or None)
        db = self._deps.db
        after: tuple[datetime, str] | None = None
        while True:
            # Short transactions, one per batch: a slow reader holds no database
            # connection, and memory holds one batch whatever the workspace's size.
            async with db.workspace(workspace_id) as session:
                rows = await conversations_after(session, filters, after, EXPORT_CONVERSATIONS)
            for row in rows:
                conversation = conversation_to_proto(row)
                after_seq = 0
                continued = False
                while True:
                    async with db.workspace(workspace_id) as session:
                        messages = await ConversationRepository(session).list_messages(
                            row.id, limit=EXPORT_MESSAGES, after_seq=after_seq
                        )
                    if messages or not continued:
                        yield conversation_pb2.ExportConversationsResponse(
                            conversation=conversation,
                            messages=[message_to_proto(m) for m in messages],
                            continued=continued,
                        )
                    if len(messages) < EXPORT_MESSAGES:
                        break
                    after_seq = messages[-1].seq
                    continued = True
            if len(rows) < EXPORT_CONVERSATIONS:
                return
            after = (rows[-1].create_time, rows[-1].id)
