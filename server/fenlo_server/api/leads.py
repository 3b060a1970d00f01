"""LeadService: the leads the chat pipeline scores, and the status, owner and
notes people keep on them."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from grpc import aio

from fenlo.v1 import analysis_pb2, lead_pb2, lead_pb2_grpc
from fenlo_server import names
from fenlo_server.api.common import (
    Deps,
    Pager,
    authorize_workspace,
    check_text,
    to_timestamp,
    update_paths,
)
from fenlo_server.errors import Violations, invalid, not_found
from fenlo_server.events.types import LEAD_UPDATED, Event
from fenlo_server.storage.leads import LeadFilter, LeadOrder, LeadRepository, LeadView
from fenlo_server.storage.models import utcnow
from fenlo_server.storage.outbox import append_events

Ctx = aio.ServicerContext[Any, Any]
Status = lead_pb2.LeadStatus
UPDATABLE = ("status", "owner", "notes")
MAX_OWNER = 200
MAX_NOTES = 10_000
MAX_EMAIL = 320
_ORDERS: dict[str, LeadOrder] = {
    "": "score",
    "score desc": "score",
    "update_time desc": "update_time",
    "create_time desc": "create_time",
}
_CONTACT_FIELDS = ("email", "phone", "name", "company")


def lead_name(workspace_id: str, lead_id: str) -> str:
    return f"workspaces/{workspace_id}/leads/{lead_id}"


def status_name(value: int) -> str:
    return Status.Name(value).removeprefix("LEAD_STATUS_")  # type: ignore[arg-type]


def lead_to_proto(view: LeadView) -> lead_pb2.Lead:
    row = view.row
    contact = row.contact or {}
    return lead_pb2.Lead(
        name=lead_name(row.workspace_id, row.id),
        conversation=names.conversation(row.workspace_id, row.conversation_id),
        score=row.score,
        status=Status.Value(f"LEAD_STATUS_{row.status}"),
        owner=row.owner,
        notes=row.notes,
        signals=[
            analysis_pb2.LeadSignal(
                kind=str(s.get("kind", "")),
                points=float(s.get("points", 0.0)),
                evidence=str(s.get("evidence", "")),
            )
            for s in row.signals or []
            if isinstance(s, dict)
        ],
        contact=lead_pb2.LeadContact(
            **{k: str(contact[k]) for k in _CONTACT_FIELDS if isinstance(contact.get(k), str)}
        ),
        turns=row.turns,
        qualified_time=to_timestamp(row.qualified_time),
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
        external_contact_id=view.external_contact_id,
    )


def _order(value: str) -> LeadOrder:
    normal = " ".join(value.lower().split())
    if normal in ("score", "update_time", "create_time"):
        normal += " desc"
    order = _ORDERS.get(normal)
    if order is None:
        raise invalid("order_by", "must be `score desc`, `update_time desc` or `create_time desc`")
    return order


def _cursor_value(order: LeadOrder, view: LeadView) -> float | str:
    row = view.row
    if order == "score":
        return row.score
    return (row.update_time if order == "update_time" else row.create_time).isoformat()


def _after(order: LeadOrder, cursor: dict[str, Any]) -> tuple[float | datetime, str] | None:
    if not cursor:
        return None
    value = cursor["v"]
    if order == "score":
        return float(value), str(cursor["id"])
    return datetime.fromisoformat(str(value)), str(cursor["id"])


class LeadServicer(lead_pb2_grpc.LeadServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def ListLeads(
        self, request: lead_pb2.ListLeadsRequest, context: Ctx
    ) -> lead_pb2.ListLeadsResponse:
        workspace_id = names.workspace_id(request.parent, "parent")
        principal = authorize_workspace(workspace_id)
        order = _order(request.order_by)
        violations = Violations()
        statuses: list[str] = []
        for i, status in enumerate(request.statuses):
            if status == Status.LEAD_STATUS_UNSPECIFIED or status not in Status.values():
                violations.add(f"statuses[{i}]", "must be NEW, CONTACTED, QUALIFIED, WON or LOST")
            else:
                statuses.append(status_name(status))
        if not math.isfinite(request.min_score) or not 0 <= request.min_score <= 100:
            violations.add("min_score", "must be between 0 and 100")
        conversation_id: str | None = None
        if request.conversation:
            conv_workspace, conversation_id = names.parse(
                "conversation", request.conversation, "conversation"
            )
            if conv_workspace != workspace_id:
                violations.add("conversation", f"must be a conversation of {request.parent}")
        check_text(violations, "contact_email", request.contact_email, max_chars=MAX_EMAIL)
        violations.raise_if_any()
        filters = LeadFilter(
            statuses=tuple(sorted(set(statuses))),
            min_score=request.min_score,
            conversation_id=conversation_id,
            contact_email=request.contact_email.strip() or None,
        )
        query = {
            "method": "ListLeads",
            "parent": request.parent,
            "order": order,
            "statuses": list(filters.statuses),
            "min_score": filters.min_score,
            "conversation": filters.conversation_id,
            "email": filters.contact_email.lower() if filters.contact_email else None,
        }
        pager = Pager(self._deps, principal, request.page_size, request.page_token, query)
        async with self._deps.db.workspace(workspace_id) as session:
            views = await LeadRepository(session).list_page(
                filters=filters, order=order, limit=pager.limit, after=_after(order, pager.cursor)
            )
        views, token = pager.finish(views, lambda v: {"v": _cursor_value(order, v), "id": v.row.id})
        return lead_pb2.ListLeadsResponse(
            leads=[lead_to_proto(v) for v in views], next_page_token=token
        )

    async def GetLead(self, request: lead_pb2.GetLeadRequest, context: Ctx) -> lead_pb2.Lead:
        workspace_id, lead_id = names.parse("lead", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            view = await LeadRepository(session).get(lead_id)
        if view is None:
            raise not_found("lead", request.name)
        return lead_to_proto(view)

    async def UpdateLead(self, request: lead_pb2.UpdateLeadRequest, context: Ctx) -> lead_pb2.Lead:
        workspace_id, lead_id = names.parse("lead", request.lead.name, "lead.name")
        authorize_workspace(workspace_id)
        paths = update_paths(request.update_mask, request.lead, UPDATABLE, nested=False)
        lead = request.lead
        violations = Violations()
        if "status" in paths and (
            lead.status == Status.LEAD_STATUS_UNSPECIFIED or lead.status not in Status.values()
        ):
            violations.add("lead.status", "must be NEW, CONTACTED, QUALIFIED, WON or LOST")
        if "owner" in paths:
            check_text(violations, "lead.owner", lead.owner, max_chars=MAX_OWNER)
        if "notes" in paths:
            check_text(violations, "lead.notes", lead.notes, max_chars=MAX_NOTES)
        violations.raise_if_any()
        async with self._deps.db.workspace(workspace_id) as session:
            repo = LeadRepository(session)
            view = await repo.get(lead_id)
            if view is None:
                raise not_found("lead", lead.name)
            row = view.row
            changed: list[str] = []
            if "status" in paths and row.status != status_name(lead.status):
                row.status = status_name(lead.status)
                changed.append("status")
            if "owner" in paths and row.owner != lead.owner:
                row.owner = lead.owner
                changed.append("owner")
            if "notes" in paths and row.notes != lead.notes:
                row.notes = lead.notes
                changed.append("notes")
            if changed:
                now = utcnow()
                row.update_time = now
                if row.status == "QUALIFIED" and row.qualified_time is None:
                    row.qualified_time = now
                await repo.save(row)
                await append_events(
                    session,
                    [
                        Event(
                            LEAD_UPDATED,
                            {
                                "lead": lead.name,
                                "conversation": names.conversation(
                                    workspace_id, row.conversation_id
                                ),
                                "fields": changed,
                                "status": row.status,
                            },
                        )
                    ],
                )
        return lead_to_proto(view)
