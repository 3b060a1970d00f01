"""WebhookService: a workspace's webhooks and their deliveries (admin only)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2
from grpc import aio
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo.v1 import webhook_pb2, webhook_pb2_grpc
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
from fenlo_server.errors import Violations, not_found
from fenlo_server.events import types as event_types
from fenlo_server.events import url_policy
from fenlo_server.events.secret_box import SecretBox
from fenlo_server.ids import new_id
from fenlo_server.storage.models import WebhookDeliveryRow, WebhookRow
from fenlo_server.storage.repositories import WorkspaceStore
from fenlo_server.storage.webhooks import STATES, WebhookRepository

Ctx = aio.ServicerContext[Any, Any]
UPDATABLE = ("url", "event_types", "description", "enabled", "secret")
MAX_EVENT_TYPES = 50
MIN_SECRET, MAX_SECRET = 24, 256
SECRET_PREFIX = "whsec_"
STATE_VALUES = {name: webhook_pb2.DeliveryState.Value(f"DELIVERY_STATE_{name}") for name in STATES}
STATE_NAMES = {value: name for name, value in STATE_VALUES.items()}


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class WebhookServicer(webhook_pb2_grpc.WebhookServiceServicer):
    def __init__(
        self, deps: Deps, box: SecretBox, *, on_change: Callable[[str], None] | None = None
    ) -> None:
        self._deps = deps
        self._box = box
        # Told the workspace id after a webhook is made or changed (the composition
        # root tells every replica's dispatcher to look again).
        self._on_change = on_change or (lambda _workspace_id: None)

    async def _validate(
        self, violations: Violations, webhook: webhook_pb2.Webhook, paths: tuple[str, ...]
    ) -> list[str]:
        """Check the fields on ``paths``; return the event types, normalised."""
        prefix = "webhook"
        if "url" in paths:
            if not webhook.url:
                violations.add(f"{prefix}.url", "is required")
            else:
                try:
                    await url_policy.check(
                        webhook.url, allow_private=self._deps.settings.webhook_allow_private
                    )
                except url_policy.UrlRefused as refused:
                    violations.add(f"{prefix}.url", str(refused))
        types: list[str] = []
        if "event_types" in paths:
            if len(webhook.event_types) > MAX_EVENT_TYPES:
                violations.add(f"{prefix}.event_types", f"must have at most {MAX_EVENT_TYPES}")
            for i, kind in enumerate(webhook.event_types):
                if kind not in event_types.TYPES:
                    violations.add(
                        f"{prefix}.event_types[{i}]",
                        f"{kind[:64]!r} is not an event type; use one of "
                        + ", ".join(event_types.TYPES),
                    )
                elif kind not in types:
                    types.append(kind)
        if "description" in paths:
            check_text(violations, f"{prefix}.description", webhook.description, max_chars=500)
        if "secret" in paths and webhook.secret:
            secret = webhook.secret
            if not MIN_SECRET <= len(secret) <= MAX_SECRET:
                violations.add(
                    f"{prefix}.secret",
                    f"must be {MIN_SECRET} to {MAX_SECRET} characters, got {len(secret)}",
                )
            elif not all(32 < ord(c) < 127 for c in secret):
                violations.add(f"{prefix}.secret", "must be printable ASCII without spaces")
        return types

    async def CreateWebhook(
        self, request: webhook_pb2.CreateWebhookRequest, context: Ctx
    ) -> webhook_pb2.CreateWebhookResponse:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        types = await self._validate(violations, request.webhook, UPDATABLE)
        violations.raise_if_any()
        request_id = request_id_of(request.request_id)
        digest = request_hash(request) if request_id else None
        webhook = request.webhook

        async def create(session: AsyncSession) -> WebhookRow:
            if await WorkspaceStore(session).get(workspace_id) is None:
                raise not_found("workspace", request.parent)
            webhook_id = new_id()
            secret = webhook.secret or generate_secret()
            return await WebhookRepository(session).create(
                webhook_id=webhook_id,
                url=webhook.url,
                event_types=types,
                description=webhook.description,
                enabled=webhook.enabled if webhook.HasField("enabled") else True,
                secret_ciphertext=self._box.encrypt(secret, webhook_id),
                request_id=request_id,
                request_hash=digest,
            )

        row, _ = await create_once(
            lambda: self._deps.db.workspace(workspace_id),
            request_id,
            digest,
            lambda session, rid: WebhookRepository(session).find_by_request_id(rid),
            create,
        )
        self._on_change(workspace_id)
        return webhook_pb2.CreateWebhookResponse(
            webhook=_to_proto(row), secret=self._box.decrypt(row.secret_ciphertext, row.id)
        )

    async def GetWebhook(
        self, request: webhook_pb2.GetWebhookRequest, context: Ctx
    ) -> webhook_pb2.Webhook:
        workspace_id, webhook_id = names.parse("webhook", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            row = await WebhookRepository(session).get(webhook_id)
        if row is None:
            raise not_found("webhook", request.name)
        return _to_proto(row)

    async def ListWebhooks(
        self, request: webhook_pb2.ListWebhooksRequest, context: Ctx
    ) -> webhook_pb2.ListWebhooksResponse:
        _, rows, token = await list_by_id(self._deps, request, "ListWebhooks", WebhookRepository)
        return webhook_pb2.ListWebhooksResponse(
            webhooks=[_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateWebhook(
        self, request: webhook_pb2.UpdateWebhookRequest, context: Ctx
    ) -> webhook_pb2.Webhook:
        workspace_id, webhook_id = names.parse("webhook", request.webhook.name, "webhook.name")
        authorize_workspace(workspace_id)
        paths = tuple(update_paths(request.update_mask, request.webhook, UPDATABLE, nested=False))
        webhook = request.webhook
        violations = Violations()
        if "secret" in paths and not webhook.secret:
            violations.add("webhook.secret", "is required to rotate the secret")
        types = await self._validate(violations, webhook, paths)
        violations.raise_if_any()
        async with self._deps.db.workspace(workspace_id) as session:
            repo = WebhookRepository(session)
            row = await repo.get(webhook_id)
            if row is None:
                raise not_found("webhook", request.webhook.name)
            if "url" in paths:
                row.url = webhook.url
            if "event_types" in paths:
                row.event_types = types
            if "description" in paths:
                row.description = webhook.description
            if "enabled" in paths:
                if webhook.enabled and not row.enabled:
                    # Events from now on: not those of the time it was off.
                    row.event_seq = await repo.current_seq()
                row.enabled = webhook.enabled
                row.disabled_reason = ""
            if "secret" in paths:
                row.secret_ciphertext = self._box.encrypt(webhook.secret, row.id)
            row = await repo.save(row)
        self._on_change(workspace_id)
        return _to_proto(row)

    async def DeleteWebhook(
        self, request: webhook_pb2.DeleteWebhookRequest, context: Ctx
    ) -> empty_pb2.Empty:
        workspace_id, webhook_id = names.parse("webhook", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            deleted = await WebhookRepository(session).delete(webhook_id)
        if not deleted:
            raise not_found("webhook", request.name)
        return empty_pb2.Empty()

    async def ListDeliveries(
        self, request: webhook_pb2.ListDeliveriesRequest, context: Ctx
    ) -> webhook_pb2.ListDeliveriesResponse:
        workspace_id, webhook_id = names.parse("webhook", request.parent, "parent")
        principal = authorize_workspace(workspace_id)
        state = STATE_NAMES.get(request.state) if request.state else None
        if request.state and state is None:
            violations = Violations()
            violations.add("state", "is not a delivery state")
            violations.raise_if_any()
        pager = Pager(
            self._deps,
            principal,
            request.page_size,
            request.page_token,
            {"method": "ListDeliveries", "parent": request.parent, "state": request.state},
        )
        async with self._deps.db.workspace(workspace_id) as session:
            repo = WebhookRepository(session)
            if await repo.get(webhook_id) is None:
                raise not_found("webhook", request.parent)
            rows = await repo.list_deliveries(
                webhook_id, state=state, limit=pager.limit, before_id=pager.cursor.get("id")
            )
        rows, token = pager.finish(rows, lambda row: {"id": row.id})
        return webhook_pb2.ListDeliveriesResponse(
            deliveries=[_delivery_to_proto(r) for r in rows], next_page_token=token
        )


def _to_proto(row: WebhookRow) -> webhook_pb2.Webhook:
    return webhook_pb2.Webhook(
        name=names.webhook(row.workspace_id, row.id),
        url=row.url,
        event_types=list(row.event_types),
        description=row.description,
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )


def _delivery_to_proto(row: WebhookDeliveryRow) -> webhook_pb2.Delivery:
    attempts = []
    for item in row.attempts:
        start = timestamp_pb2.Timestamp()
        start.FromJsonString(str(item["start_time"]))
        duration = duration_pb2.Duration()
        duration.FromMilliseconds(round(float(item["duration_ms"])))
        attempts.append(
            webhook_pb2.DeliveryAttempt(
                attempt_number=int(item["attempt"]),
                start_time=start,
                duration=duration,
                status_code=int(item["status_code"]),
                error=str(item["error"]),
            )
        )
    return webhook_pb2.Delivery(
        name=names.delivery(row.workspace_id, row.webhook_id, row.id),
        event_id=row.event_id,
        event_seq=row.event_seq,
        event_type=row.event_type,
        state=STATE_VALUES[row.state],
        attempt_count=row.attempt_count,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_time=to_timestamp(row.next_attempt_time),
        attempts=attempts,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )
