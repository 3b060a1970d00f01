"""Events end to end through the real server: a real chat turn's events reach a
local webhook receiver, signed, each once; erasing the contact afterwards leaves
no trace of it, not even in the webhook deliveries' stored bodies."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from fenlo.v1 import webhook_pb2
from tests.helpers import Api
from tests.integration.test_erasure import erase, marker, texts
from tests.integration.test_webhooks import (
    Receiver,
    create_hook,
    documented_verify,
    fast_app,
    receiver,
    wait_final,
)
from tests.lifecycle_helpers import chat_turns, found_in, table_dump

__all__ = ["receiver"]  # the fixture, imported for pytest

H = webhook_pb2


async def test_a_turns_events_reach_a_webhook_signed_once_and_erasure_removes_them(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    app = await fast_app(tmp_path, database_url)
    try:
        async with Api(app) as api:
            ws, admin = await api.create_workspace("Events end to end")
            hook = await create_hook(
                api, ws, admin, receiver.url, event_types=["turn.completed", "message.created"]
            )
            contact = f"crm-{uuid.uuid4().hex}"
            mark = marker()
            conversation = await chat_turns(api, admin, ws, contact, texts(mark)[:1])

            # One turn: the user's and the assistant's message.created, one turn.completed.
            delivered = await wait_final(api, admin, hook.webhook.name, count=3)
            assert {d.state for d in delivered} == {H.DELIVERY_STATE_SUCCEEDED}
            assert sorted(d.event_type for d in delivered) == [
                "message.created",
                "message.created",
                "turn.completed",
            ]
            requests = receiver.got()
            assert len(requests) == 3  # each event once: no effect applied twice
            assert len({r.headers["Fenlo-Event-Id"] for r in requests}) == 3
            verify = documented_verify()
            for request in requests:
                assert verify(hook.secret, request.headers, request.body)
                body = json.loads(request.body)
                assert body["workspace"] == f"workspaces/{ws}"
                named = body["payload"].get("conversation") or body["payload"]["message"]
                assert named.startswith(conversation.name)
            seqs = sorted(json.loads(r.body)["seq"] for r in requests)
            assert len(set(seqs)) == 3

            conversation_id = conversation.name.rsplit("/", 1)[1]
            before = await table_dump(app.db, ws)
            assert "webhook_deliveries" in found_in(before, conversation_id)

            erased = await erase(api, admin, ws, contact)
            assert erased.conversations_deleted == 1
            after = await table_dump(app.db, ws)
            for needle in (mark, contact, conversation_id):
                assert found_in(after, needle) == [], needle
    finally:
        await app.stop(grace=0)
