"""The relay's stream entries and ordering (pure functions; the relay itself is
tested against real servers in tests/integration/test_events.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from fenlo_server.events.relay import StreamKeys, _order, event_from_fields, stream_fields
from fenlo_server.storage.models import OutboxEventRow


def row(workspace: str, seq: int, event_id: str) -> OutboxEventRow:
    return OutboxEventRow(
        id=event_id,
        workspace_id=workspace,
        seq=seq,
        type="message.created",
        payload={"message": f"workspaces/{workspace}/conversations/c/messages/m{seq}", "n": 1.5},
        create_time=datetime(2026, 12, 3, 10, 0, seq, tzinfo=UTC),
    )


def test_a_stream_entry_carries_the_whole_event() -> None:
    original = row("w1", 7, "01abc")
    fields = stream_fields(original, "replica-a")
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["origin"] == "replica-a"
    event = event_from_fields(fields)
    assert (event.id, event.workspace_id, event.seq, event.type) == (
        "01abc",
        "w1",
        7,
        "message.created",
    )
    assert event.payload == original.payload
    assert event.create_time == original.create_time


def test_each_workspace_is_published_in_sequence_order() -> None:
    rows = [row("w2", 2, "a"), row("w1", 3, "b"), row("w2", 1, "c"), row("w1", 2, "d")]
    assert [(r.workspace_id, r.seq) for r in _order(rows)] == [
        ("w1", 2),
        ("w1", 3),
        ("w2", 1),
        ("w2", 2),
    ]


def test_stream_keys_carry_the_workspace() -> None:
    keys = StreamKeys("fenlo")
    assert keys.workspace("w1") == "fenlo:ws:w1:events"
    assert (keys.shared, keys.epoch) == ("fenlo:events", "fenlo:events:epoch")
